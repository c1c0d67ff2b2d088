"""Malformed and hostile requests at a real ``python -m server`` (production mode, SQLite), at DEBUG and at INFO,
in JSON and console format: no log line, from our code or from any library (aiohttp's parser and server, asyncio,
SQLAlchemy, aiosqlite), carries the webcam frame (its bytes, base64 or hex), the API key, an IIN, a phone, a name
or a code, and none is longer than a traceback.

The requests are raw bytes over a socket, so the test controls what aiohttp's parser sees: a Content-Length
shorter than the body (the rest of the frame is read as the next request), an Authorization header padded past
the line limit, an oversized header carrying an IIN, broken chunked encoding, a frame where the method should
be, control bytes in the URL and in header names, a key as the Content-Length. Then a legitimate flow (a new
patient, a code verified) so that SQLAlchemy and aiosqlite, at DEBUG, have bound parameters to show.

In-process tests add the rest: every library logger, with secrets in its message, its arguments, its extra
fields and its traceback; and the database layer at DEBUG, a failed statement's exception included.
"""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import re
import secrets
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from core.db.engine import create_engine
from core.logs import configure_logging, get_logger
from core.services import api_keys, codes, registry, visits
from tests.security.support import Seeded, ServerProcess, new_secrets

pytestmark = pytest.mark.slow  # real server processes and every log level

FACES = Path(__file__).parents[1] / "fixtures" / "faces"
FRAME = (FACES / "alex_lacamoire" / "alex3.png").read_bytes()  # a real face, 118 KB
IIN, NEW_IIN = "900101300017", "850315400015"
PHONE, NEW_PHONE = "+77011234567", "+77057654321"
NAME = "Zhanar Testbayeva"
MAX_LINE = 16_000  # a traceback fits; a frame does not


def frame_needles() -> list[str]:
    """Slices of the frame as a log could show them: a bytes repr, latin-1 text, hex, base64 (both alphabets)."""
    found = []
    for at in range(64, len(FRAME) - 24, 997):
        piece = FRAME[at:at + 24]
        if not any(c in piece for c in b"'\"\\"):
            found.append(repr(piece)[2:-1])
        found += [piece.decode("latin-1"), piece.hex()]
    for encoded in (FRAME.hex(), base64.b64encode(FRAME).decode(), base64.urlsafe_b64encode(FRAME).decode()):
        found += [encoded[at:at + 40] for at in range(0, len(encoded) - 40, 1500)]
    return found


def raw(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body


async def send(port: int, payload: bytes) -> bytes:
    """Write raw bytes, read what comes back until the server closes (or two seconds pass)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 2)
    except (TimeoutError, ConnectionError):
        return b""
    finally:
        writer.close()


def hostile_requests(world: dict) -> dict[str, bytes]:
    key, code, face, online = world["key"], world["code"], world["face_visit"], world["code_visit"]
    auth = f"Authorization: Bearer {key}\n"
    code_body = json.dumps({"code": code, "iin": IIN, "phone": PHONE}).encode()
    return {
        "content-length shorter than the frame": raw(
            f"POST /api/v1/visits/{face}/face HTTP/1.1\nHost: x\n{auth}Content-Type: image/png\n"
            f"Content-Length: 64\n", FRAME),
        "content-length shorter than a code": raw(
            f"POST /api/v1/visits/{online}/code HTTP/1.1\nHost: x\n{auth}Content-Type: application/json\n"
            f"Content-Length: 3\n", code_body + b"\r\n" + code_body),
        "authorization padded past the line limit": raw(
            f"GET /api/v1/visits HTTP/1.1\nHost: x\nAuthorization: Bearer{' ' * 9000}{key}\n"),
        "oversized header with an iin, a phone and a code": raw(
            f"GET /healthz HTTP/1.1\nHost: x\nX-Patient: {IIN} {PHONE} {code}{' ' * 9000}{IIN}\n"),
        "oversized request line with a key": raw(f"GET /api/v1/visits?key={key}{'a' * 9000}{key} HTTP/1.1\nHost: x\n"),
        "broken chunked encoding": raw(
            f"POST /api/v1/visits/{face}/face HTTP/1.1\nHost: x\n{auth}Content-Type: image/png\n"
            f"Transfer-Encoding: chunked\n", b"zz" + FRAME[:40_000] + b"\r\n0\r\n\r\n"),
        "frame as the first method": FRAME[:3000] + b" / HTTP/1.1\r\nHost: x\r\n\r\n",
        "frame as a method after a good request": raw("GET /healthz HTTP/1.1\nHost: x\n")
        + FRAME[:3000] + b" / HTTP/1.1\r\nHost: x\r\n\r\n",
        "control bytes in the url": raw("GET /healthz HTTP/1.1\nHost: x\n")
        + f"GET /api/v1/patients?iin={IIN}&key={key}\x00\x01 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        "control bytes in a header name": raw("GET /healthz HTTP/1.1\nHost: x\n")
        + raw(f"GET /healthz HTTP/1.1\nHost: x\nX-{PHONE}\x01{key}: {IIN}\n"),
        "key as the content-length": raw(
            f"POST /api/v1/visits/{online}/code HTTP/1.1\nHost: x\n{auth}Content-Length: {key}\n", code_body),
        "content-length and chunked at once": raw(
            f"POST /api/v1/visits/{face}/face HTTP/1.1\nHost: x\n{auth}Content-Length: 10\n"
            f"Transfer-Encoding: chunked\n", FRAME[:20_000]),
        "bad http version carrying the key": raw(f"GET /healthz HTTP/{key}\nHost: x\n"),
        "frame in a header value": raw("GET /healthz HTTP/1.1\nHost: x\n") + b"GET /healthz HTTP/1.1\r\nX-Frame: "
        + FRAME[100:6000].replace(b"\r", b"").replace(b"\n", b"") + b"\r\n\r\n",
        "code as the request id": raw(f"GET /healthz HTTP/1.1\nHost: x\nX-Request-ID: {code}\nConnection: close\n"),
        "frame cut off mid-upload": raw(
            f"POST /api/v1/visits/{face}/face HTTP/1.1\nHost: x\n{auth}Content-Type: image/png\n"
            f"Content-Length: {len(FRAME)}\n", FRAME[:50_000]),
    }


async def seed(seeded: Seeded) -> dict:
    ctx = await seeded.open()
    try:
        clinic = await registry.create_clinic(ctx, "Log clinic")
        doctor = await registry.add_doctor(ctx, clinic.id, "Aidos Seitkali", "+77017778899")
        patient = (await registry.upsert_patient(ctx, clinic.id, IIN, NAME, PHONE)).patient
        start = ctx.clock.now() + dt.timedelta(minutes=5)

        async def visit(mode: str) -> int:
            return (await visits.register_visit(ctx, clinic_id=clinic.id, doctor_id=doctor.id, patient_id=patient.id,
                                                start=start, duration=dt.timedelta(minutes=30), mode=mode,
                                                service_code="A01")).id

        face_visit, code_visit = await visit("in_person"), await visit("online")
        await registry.record_consent(ctx, clinic.id, patient.id, "Nurse")
        await registry.enrol_face(ctx, clinic.id, patient.id, [tuple(0.01 * i for i in range(128))])
        return {"key": (await api_keys.create_api_key(ctx, clinic.id, ["clinic_system", "webcam"])).key,
                "face_visit": face_visit, "code_visit": code_visit,
                "code": (await codes.issue_code(ctx, code_visit)).code}
    finally:
        await seeded.close()


async def legitimate_flow(base: str, world: dict) -> None:
    """Real work with real personal data, so the database layer has bound parameters and rows to show."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {world['key']}"}) as session:
        async with session.post(f"{base}/api/v1/patients", json={"iin": NEW_IIN, "full_name": NAME + " Jr",
                                                                 "phone": NEW_PHONE}) as response:
            assert response.status in (200, 201), await response.text()
        async with session.get(f"{base}/api/v1/visits/{world['code_visit']}") as response:
            assert response.status == 200
        async with session.post(f"{base}/api/v1/visits/{world['code_visit']}/code",
                                json={"code": world["code"]}) as response:
            assert (await response.json())["result"] == "verified"
    await capture_flow(base, world)


async def capture_flow(base: str, world: dict) -> None:
    """Capture sessions: the page and its socket carry a one-time token in the path and the frames as binary
    messages; one session gets the real frame (and a text message), another a frame over the limit."""
    world["tokens"] = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {world['key']}"}) as session:
        for frames in ([FRAME, FRAME], [FRAME * 5]):
            async with session.post(f"{base}/api/v1/visits/{world['face_visit']}/capture-sessions") as response:
                assert response.status == 201, await response.text()
                url = (await response.json())["url"]
            world["tokens"].append(url.rsplit("/", 1)[1])
            async with session.get(url) as page:
                assert page.status == 200
            async with aiohttp.ClientSession() as browser, browser.ws_connect(url + "/ws") as socket:
                assert (await socket.receive_json(timeout=30))["type"] == "step"
                for frame in frames:
                    await socket.send_bytes(frame)
                    message = await socket.receive(timeout=60)
                    if message.type is not aiohttp.WSMsgType.TEXT or '"outcome"' in message.data:
                        break


def searchable(line: str) -> list[str]:
    """The texts of one log line: its JSON string values (keys too, timestamp aside), or the raw line; runs of
    backslashes count as one, so a bytes repr inside a repr still matches."""
    try:
        record = json.loads(line)
    except ValueError:
        return [re.sub(r"\\+", r"\\", line)]
    texts = []

    def walk(value):
        if isinstance(value, str):
            texts.append(re.sub(r"\\+", r"\\", value))
        elif isinstance(value, dict):
            for k, v in value.items():
                if k != "timestamp":
                    texts.append(str(k))
                    walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(record)
    return texts


def leaks(log: str, world: dict) -> list[str]:
    key = world["key"]
    digits = {"iin": [IIN, NEW_IIN], "code": [world["code"]],
              "phone": [p[1:] for p in (PHONE, NEW_PHONE)] + ["87011234567", "8 701 123 45 67", "7011234567"]}
    plain = {"key": [key, key.split("_", 2)[2]], "phone": [PHONE, NEW_PHONE], "name": [NAME],
             "frame": frame_needles(), "capture token": world.get("tokens", [])}
    found = []
    for n, line in enumerate(log.splitlines()):
        if len(line) > MAX_LINE:
            found.append(f"line {n} is {len(line)} characters long")
        for shown in searchable(line):
            for what, needles in plain.items():
                if any(needle in shown for needle in needles):
                    found.append(f"line {n} carries the {what}: {line[:300]!r}")
            for what, needles in digits.items():
                if any(re.search(rf"(?<!\d){re.escape(needle)}(?!\d)", shown) for needle in needles):
                    found.append(f"line {n} carries the {what}: {line[:300]!r}")
    return found


@pytest.mark.parametrize("level", ["DEBUG", "INFO"])
@pytest.mark.parametrize("fmt", ["json", "console"])
async def test_no_log_line_at_any_level_carries_a_frame_key_iin_phone_or_code(tmp_path, level, fmt):
    seeded = Seeded(f"sqlite+aiosqlite:///{tmp_path / 'rastau.db'}", new_secrets())
    world = await seed(seeded)
    server = ServerProcess(seeded.url, seeded.keys, tmp_path / "server",
                           env_extra={"RASTAU_LOG_LEVEL": level, "RASTAU_LOG_FORMAT": fmt,
                                      "PYTHONASYNCIODEBUG": "1"}).start()  # asyncio's debug mode logs more
    try:
        await server.wait_ready("/healthz")
        for payload in hostile_requests(world).values():
            await send(server.port, payload)
        await legitimate_flow(server.base, world)
    finally:
        assert server.stop() == 0, server.stderr()[-3000:]
    log = server.stderr() + (server.workdir / f"server-{server.port}.out").read_text(errors="replace")
    assert not (found := leaks(log, world)), "\n".join(found[:20])
    assert "malformed request" in log  # the hostile requests were seen, and logged without their bytes
    assert "/capture/{token}/ws" in log and len(world["tokens"]) == 2  # the capture path ran, logged as a template


@pytest.fixture
def logs_to_stderr():
    """configure_logging for one test; the root handler, its level and the library levels put back after."""
    loggers = [logging.getLogger(name) for name in ("", "sqlalchemy", "aiosqlite", "asyncpg")]
    saved = [(logger, logger.handlers[:], logger.level) for logger in loggers]
    yield configure_logging
    for logger, handlers, level in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)


LIBRARY_LOGGERS = ("aiohttp.server", "aiohttp.access", "aiohttp.web", "asyncio", "sqlalchemy.engine.Engine",
                   "aiosqlite", "asyncpg", "aiogram.event", "aiogram.dispatcher", "apscheduler.scheduler")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_every_library_logger_goes_through_the_same_redaction(logs_to_stderr, capfd, fmt):
    world = {"key": f"rk_0123456789ab_{secrets.token_urlsafe(32)}", "code": "739251"}
    said = (f"contact {PHONE} (8 701 123 45 67) sent code {world['code']} for IIN {IIN}, "
            f"Authorization: Bearer {world['key']}")
    logs_to_stderr("DEBUG", fmt)
    for name in LIBRARY_LOGGERS:
        try:
            raise ValueError(f"{said}; frame {FRAME[:4000]!r}")
        except ValueError:
            logging.getLogger(name).exception("update %s failed: %r %s", said, FRAME[:20_000],
                                              base64.b64encode(FRAME[:9000]).decode(),
                                              extra={"contact": said, "body": FRAME.hex()[:20_000],
                                                     "update": SimpleNamespace(text=said)})
    err = capfd.readouterr().err
    assert all(name in err for name in LIBRARY_LOGGERS), err[-2000:]
    assert "Traceback" in err and "ValueError" in err  # the traceback is kept, its secrets are not
    assert not (found := leaks(err, world)), "\n".join(found[:20])


async def test_the_database_layer_at_debug_logs_no_parameters_rows_or_failed_values(db_url, logs_to_stderr, capfd):
    logs_to_stderr("DEBUG", "json")
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE people (name TEXT UNIQUE, phone TEXT)"))
            await conn.execute(text("INSERT INTO people VALUES (:name, :phone)"), {"name": NAME, "phone": PHONE})
            assert (await conn.execute(text("SELECT name FROM people"))).scalar_one() == NAME
        with pytest.raises(IntegrityError) as failed:
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO people VALUES (:name, :phone)"), {"name": NAME, "phone": PHONE})
        get_logger("rastau.test").error("insert failed", exc_info=failed.value)
    finally:
        await engine.dispose()
    err = capfd.readouterr().err
    assert "IntegrityError" in err
    assert NAME not in err and PHONE[1:] not in err
