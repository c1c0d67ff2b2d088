"""A soak: the real `python -m server` and the real `python -m bot` (its outbox dispatcher delivering to the Bot
API stand-in), under a steady open-loop mix for minutes, then latency, errors, achieved rates and memory.

The mix, each kind on its own fixed schedule (open loop: a request goes out at its time whether or not the
earlier ones have been answered, and its latency counts from that time, so a slow server cannot hide its
backlog by slowing the load down):

* **code** — a correct code for a visit of its own (seeded with known codes), answered `verified`;
* **face** — a 640×480 webcam frame of a real photo for an in-person visit of its own: four in five are the
  enrolled patient (`match`), one in five someone else (`no_match`);
* **chat** — a visit registered through the API for a patient whose chat is linked; the bot process finds its
  code message due, issues the code and sends it to the stand-in; the load generator reads the code out of
  the patient's chat and verifies it through the API. Measured: registration → message in the chat
  ("delivery"), and the whole round trip.

Memory: RSS of the server process plus its face worker (and separately of the bot), after start, after a
warm-up, every few seconds, and at the end; growth is judged from the warm-up sample to the end.
"""
from __future__ import annotations

import asyncio
import collections
import datetime as dt
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from sqlalchemy import text

from bench.face import webcam_frames
from bench.face_load import tree_rss
from bench.results import percentile
from bench.world import ROOT, db_time, free_port, fresh_context, server_env, store_known_codes, wait_healthy
from core.iin import make_iin
from core.services import chat, registry
from core.services.api_keys import create_api_key
from devkit.botapi import BotApiStandIn

BOT_TOKEN = "777000:rastau-soak-token"
DOCTORS = 50
CHAT_PATIENTS = 120  # chat visits go round-robin over these; at 1/s each chat hears from us every 2 minutes
CODE_RE = re.compile(r"<code>(\d{6})</code>")


@dataclass
class Kind:
    rate: float
    latencies: list[float] = field(default_factory=list)
    scheduled: list[float] = field(default_factory=list)  # monotonic time each answered request was due
    service: list[float] = field(default_factory=list)  # each HTTP request alone: sent → answer read
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    errors: list[str] = field(default_factory=list)
    sent: int = 0
    first_sent: float | None = None
    last_done: float | None = None

    def record(self, scheduled: float, outcome: str, expected: set[str]) -> None:
        now = time.monotonic()
        self.latencies.append(now - scheduled)
        self.scheduled.append(scheduled)
        self.outcomes[outcome] += 1
        self.last_done = now
        if outcome not in expected and len(self.errors) < 5:
            self.errors.append(outcome)

    def slow_seconds(self, threshold: float = 1.0) -> int:
        """How many 1-second windows (by scheduled time) held a request slower than ``threshold``."""
        if not self.scheduled:
            return 0
        start = min(self.scheduled)
        return len({int(due - start) for due, latency in zip(self.scheduled, self.latencies) if latency > threshold})

    def error_count(self, expected: set[str]) -> int:
        return sum(n for outcome, n in self.outcomes.items() if outcome not in expected)


EXPECTED = {"code": {"200 verified"}, "face": {"200 match", "200 no_match"}, "chat": {"200 verified"},
            "delivery": {"delivered"}}


async def seed(database_url: str, *, code_visits: int, face_visits: int, chat_patients: int) -> dict:
    """Doctors, patients (some with a linked chat, one with an enrolled face), visits with known codes for the
    code kind, in-person visits for the face kind, and one API key for the load generator."""
    from server.face.pipeline import analyse_frame

    keys, engine, ctx = await fresh_context(database_url)
    clinic = await registry.create_clinic(ctx, "Soak polyclinic")
    doctors = [await registry.add_doctor(ctx, clinic.id, f"Doctor {n}", f"+7701{1000000 + n}") for n in range(DOCTORS)]
    face_patient = (await registry.upsert_patient(ctx, clinic.id, "900101300017", "Face Patient",
                                                  "+77020000000")).patient
    await registry.record_consent(ctx, clinic.id, face_patient.id, "soak")
    reference = analyse_frame((ROOT / "tests/fixtures/faces/obama/obama1.jpg").read_bytes())
    await registry.enrol_face(ctx, clinic.id, face_patient.id, [reference.encoding])
    chats = {}
    for n in range(chat_patients):
        phone = f"+7705{2000000 + n}"
        iin = make_iin(dt.date(1985, 1, 1 + n % 28), False, n)  # equal birth days are 28 serials apart
        patient = (await registry.upsert_patient(ctx, clinic.id, iin, f"Chat Patient {n}", phone,
                                                 "kk" if n % 2 else "ru")).patient
        chat_id = 500_000 + n
        await chat.link_chat_by_phone(ctx, chat_id, phone, "kk" if n % 2 else "ru")
        chats[patient.id] = chat_id
    api_key = (await create_api_key(ctx, clinic.id, ["clinic_system", "webcam"], label="soak")).key
    now = ctx.clock.now()
    insert_visit = text("INSERT INTO visits (clinic_id, doctor_id, patient_id, start_at, duration_s, mode, "
                        "service_code, state, created_at) VALUES (:clinic, :doctor, :patient, :start, 43200, "
                        "'in_person', 'A01', 'scheduled', :start)")
    async with engine.begin() as conn:
        await conn.execute(insert_visit, [{"clinic": clinic.id, "doctor": doctors[n % DOCTORS].id,
                                           "patient": face_patient.id, "start": db_time(engine, now)}
                                          for n in range(code_visits + face_visits)])
        ids = [row[0] for row in (await conn.execute(text("SELECT id FROM visits ORDER BY id"))).all()]
        code_ids, face_ids = ids[:code_visits], ids[code_visits:]
        codes = await store_known_codes(conn, ctx, code_ids, now)
    await engine.dispose()
    return {"keys": keys, "api_key": api_key, "codes": codes, "face_ids": face_ids, "chats": chats,
            "doctor_ids": [d.id for d in doctors]}




async def _open_loop(kind: Kind, duration: float, fire) -> None:
    """Start ``fire(n, scheduled)`` at ``kind.rate`` per second for ``duration`` seconds, never waiting for
    answers; then wait for every request still in flight."""
    loop = asyncio.get_running_loop()
    start, n, tasks = loop.time(), 0, set()
    offset = time.monotonic() - start
    while (due := start + n / kind.rate) < start + duration:
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(fire(n, due + offset))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        kind.sent += 1
        kind.first_sent = kind.first_sent or time.monotonic()
        n += 1
    if tasks:
        await asyncio.gather(*tasks)


async def run(workdir: str, database_url: str, *, duration: float, code_rate: float = 100.0,
              face_rate: float = 2.0, chat_rate: float = 1.0, warm_up: float = 30.0,
              chat_patients: int = CHAT_PATIENTS) -> dict:
    code_visits = int(code_rate * duration * 1.05) + 10
    face_visits = int(face_rate * duration * 1.05) + 10
    world = await seed(database_url, code_visits=code_visits, face_visits=face_visits, chat_patients=chat_patients)
    frames = {name: data for name, data in webcam_frames() if name.startswith(("obama/obama", "biden/"))
              and "240p" not in name}
    matching = [data for name, data in sorted(frames.items()) if name.startswith("obama/")]
    other = [data for name, data in sorted(frames.items()) if name.startswith("biden/")]

    api = BotApiStandIn(bot_id=int(BOT_TOKEN.split(":")[0]), username="rastau_soak_bot", enforce_limits=True)
    await api.start()
    port = free_port()
    logs = Path(workdir) / f"soak-{port}"
    logs.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=open(logs / "server.err", "w"),
                              env=server_env(database_url, world["keys"], RASTAU_SERVER_PORT=str(port),
                                       RASTAU_FACE_WORKERS="1"))
    bot = subprocess.Popen([sys.executable, "-m", "bot"], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=open(logs / "bot.err", "w"),
                           env=server_env(database_url, world["keys"], RASTAU_BOT_TOKEN=BOT_TOKEN,
                                    RASTAU_TELEGRAM_API_BASE=api.base_url))
    base = f"http://127.0.0.1:{port}"
    kinds = {"code": Kind(code_rate), "face": Kind(face_rate), "chat": Kind(chat_rate), "delivery": Kind(chat_rate)}
    rss_samples: list[tuple[float, int, int]] = []
    load: list[float] = []  # the machine's 1-minute load average, sampled with RSS (other work shares the cores)
    try:
        async with aiohttp.ClientSession() as probe:
            await wait_healthy(probe, base, server)
            for _ in range(3000):
                async with probe.get(base + "/readyz") as response:
                    if response.status == 200:
                        break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("face workers never became ready")
        await _wait_for_bot(api, bot)
        rss_start = (tree_rss(server.pid), tree_rss(bot.pid))

        headers = {"Authorization": f"Bearer {world['api_key']}"}
        connector = aiohttp.TCPConnector(limit=128)
        timeout = aiohttp.ClientTimeout(total=60)
        inbox: dict[int, collections.deque] = collections.defaultdict(collections.deque)  # chat → futures
        stop = asyncio.Event()
        async with aiohttp.ClientSession(headers=headers, connector=connector, timeout=timeout) as session:
            async def call(kind: str, scheduled: float, method: str, url: str, **kw) -> tuple[int, dict]:
                try:
                    sent = time.monotonic()
                    async with session.request(method, base + url, **kw) as response:
                        body = await response.json(content_type=None)
                    kinds[kind].service.append(time.monotonic() - sent)
                    return response.status, body
                except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the soak
                    kinds[kind].record(scheduled, f"exception {type(exc).__name__}", EXPECTED[kind])
                    return 0, {}

            async def code(n: int, scheduled: float) -> None:
                visit_id, value = world["codes"][n]
                status, body = await call("code", scheduled, "POST", f"/api/v1/visits/{visit_id}/code",
                                          json={"code": value})
                if status:
                    kinds["code"].record(scheduled, f"{status} {body.get('result', body.get('code'))}",
                                         EXPECTED["code"])

            async def face(n: int, scheduled: float) -> None:
                frame = other[n % len(other)] if n % 5 == 4 else matching[n % len(matching)]
                expected = "200 no_match" if n % 5 == 4 else "200 match"
                status, body = await call("face", scheduled, "POST", f"/api/v1/visits/{world['face_ids'][n]}/face",
                                          data=frame, headers={"Content-Type": "image/jpeg"})
                if status:
                    outcome = f"{status} {body.get('decision', body.get('code'))}"
                    kinds["face"].record(scheduled, outcome if outcome == expected else f"{outcome} (wanted "
                                         f"{expected})", EXPECTED["face"])

            chat_patients = list(world["chats"])

            async def chat_visit(n: int, scheduled: float) -> None:
                patient_id = chat_patients[n % len(chat_patients)]
                chat_id = world["chats"][patient_id]
                start = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)).isoformat()
                arrived = asyncio.get_running_loop().create_future()
                inbox[chat_id].append(arrived)
                status, body = await call("chat", scheduled, "POST", "/api/v1/visits", json={
                    "doctor_id": world["doctor_ids"][n % DOCTORS], "patient_id": patient_id, "start": start,
                    "duration_minutes": 30, "mode": "in_person", "service_code": "A01"})
                if status != 201:
                    if status:
                        kinds["chat"].record(scheduled, f"{status} {body.get('code')}", EXPECTED["chat"])
                    inbox[chat_id].remove(arrived)
                    return
                registered = time.monotonic()
                try:
                    delivered_at, value = await asyncio.wait_for(arrived, timeout=60)
                except TimeoutError:
                    kinds["delivery"].record(registered, "not delivered within 60 s", EXPECTED["delivery"])
                    kinds["chat"].record(scheduled, "no code", EXPECTED["chat"])
                    return
                delivery = kinds["delivery"]
                delivery.latencies.append(delivered_at - registered)
                delivery.outcomes["delivered"] += 1
                delivery.first_sent = delivery.first_sent or registered
                delivery.last_done = delivered_at
                status, body = await call("chat", scheduled, "POST", f"/api/v1/visits/{body['id']}/code",
                                          json={"code": value})
                if status:
                    kinds["chat"].record(scheduled, f"{status} {body.get('result', body.get('code'))}",
                                         EXPECTED["chat"])

            async def read_chats() -> None:
                """The patients' phones: every code message the stand-in accepted resolves the oldest waiting
                visit of that chat."""
                seen = 0
                while not stop.is_set():
                    while seen < len(api.sent):
                        message = api.sent[seen]
                        seen += 1
                        found = CODE_RE.search(message.text or "")
                        waiting = inbox.get(message.chat_id)
                        if found and waiting:
                            future = waiting.popleft()
                            if not future.done():
                                future.set_result((message.at, found.group(1)))
                    await asyncio.sleep(0.02)

            async def sample_rss() -> None:
                started = time.monotonic()
                while not stop.is_set():
                    rss_samples.append((time.monotonic() - started, tree_rss(server.pid), tree_rss(bot.pid)))
                    load.append(os.getloadavg()[0])
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=max(1.0, duration / 60))
                    except TimeoutError:
                        pass

            reader = asyncio.create_task(read_chats())
            sampler = asyncio.create_task(sample_rss())
            started = time.monotonic()
            await asyncio.gather(_open_loop(kinds["code"], duration, code),
                                 _open_loop(kinds["face"], duration, face),
                                 _open_loop(kinds["chat"], duration, chat_visit))
            elapsed = time.monotonic() - started
            stop.set()
            await asyncio.gather(reader, sampler)
        rss_end = (tree_rss(server.pid), tree_rss(bot.pid))
    finally:
        for process in (bot, server):
            process.terminate()
        exit_codes = [process.wait(timeout=60) for process in (server, bot)]
        await api.stop()
    warm = [s for s in rss_samples if s[0] >= min(warm_up, duration / 3)]
    rss_warm = (warm[0][1], warm[0][2]) if warm else rss_start
    duplicates = len(api.sent) - len({(m.chat_id, m.text) for m in api.sent})
    return {"duration": duration, "elapsed": elapsed, "kinds": kinds, "rss_start": rss_start,
            "rss_warm": rss_warm, "rss_end": rss_end, "rss_max": max((s[1] for s in rss_samples), default=0),
            "warm_up": min(warm_up, duration / 3), "exit_codes": exit_codes, "messages": len(api.sent),
            "duplicates": duplicates, "telegram_429": api.limit_violations, "load": (min(load), max(load)),
            "server_errors": _count_lines(logs / "server.err", '"level": "error"'),
            "bot_errors": _count_lines(logs / "bot.err", '"level": "error"')}


def _count_lines(path: Path, needle: str) -> int:
    return sum(needle in line for line in path.read_text(errors="replace").splitlines())


async def _wait_for_bot(api: BotApiStandIn, bot: subprocess.Popen, timeout: float = 120) -> None:
    """The bot is up once it has asked the stand-in for updates (polling started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if bot.poll() is not None:
            raise RuntimeError(f"bot exited with {bot.returncode}")
        if any(method == "getupdates" for method, _ in api.calls):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the bot never started polling the stand-in")


def check(result: dict) -> list[str]:
    """What must hold in any soak, smoke or full: no errors, nothing lost or duplicated, clean exits."""
    problems = []
    for name, kind in result["kinds"].items():
        if kind.error_count(EXPECTED[name]):
            problems.append(f"{name}: {kind.error_count(EXPECTED[name])} errors, e.g. {kind.errors}")
    delivered = result["kinds"]["delivery"].outcomes["delivered"]
    if delivered != result["kinds"]["chat"].sent:
        problems.append(f"chat: {result['kinds']['chat'].sent} visits registered, {delivered} codes delivered")
    if result["duplicates"]:
        problems.append(f"{result['duplicates']} duplicate chat messages")
    if result["exit_codes"] != [0, 0]:
        problems.append(f"server/bot exit codes {result['exit_codes']}")
    return problems


def _service(kind: Kind) -> str:
    if not kind.service:
        return "—"
    return f"{percentile(kind.service, 50) * 1000:.0f} / {percentile(kind.service, 99) * 1000:.0f} ms"


def report(by_db: dict[str, dict]) -> str:
    first = next(iter(by_db.values()))
    lines = [
        f"The real `python -m server` (1 face worker) and `python -m bot` (its outbox dispatcher) with the Bot API "
        f"stand-in enforcing Telegram's limits, one load-generator process; {os.cpu_count()} cores shared by all. "
        f"Open loop for {first['duration']:.0f} s: correct codes at {first['kinds']['code'].rate:g}/s, webcam frames "
        f"of real photos at {first['kinds']['face'].rate:g}/s (4 in 5 the enrolled patient), and "
        f"{first['kinds']['chat'].rate:g} visit/s registered through the API whose code the bot delivers to the "
        "patient's chat and the generator then verifies. Latency counts from each request's scheduled time (so it "
        "includes any wait for a connection or for the generator itself); *sent → answered* is the HTTP request "
        "alone.", "",
        "| database | kind | target rate | achieved | requests | p50 | p99 | max | p50 / p99 sent → answered | "
        "errors |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for db, r in by_db.items():
        for name, kind in r["kinds"].items():
            if not kind.latencies:
                continue
            achieved = len(kind.latencies) / (kind.last_done - kind.first_sent) if kind.last_done else 0
            label = {"code": "code verification", "face": "face verification",
                     "chat": "chat: register → code in chat → verify", "delivery": "↳ registration → code in chat"
                     }[name]
            p50, p99 = percentile(kind.latencies, 50), percentile(kind.latencies, 99)
            lines.append(f"| {db} | {label} | {kind.rate:g}/s | {achieved:.1f}/s | {len(kind.latencies):,} | "
                         f"{p50 * 1000:.0f} ms | {p99 * 1000:.0f} ms | {max(kind.latencies) * 1000:.0f} ms | "
                         f"{_service(kind)} | {kind.error_count(EXPECTED[name])} |")
    lines += ["", "| database | server+worker RSS: start | after warm-up | end | growth (warm-up → end) | max "
                  "| bot RSS start → end | chat messages | duplicates | Telegram 429s | error log lines |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for db, r in by_db.items():
        growth = (r["rss_end"][0] - r["rss_warm"][0]) / r["rss_warm"][0]
        lines.append(f"| {db} | {r['rss_start'][0] / 2**20:.0f} MiB | {r['rss_warm'][0] / 2**20:.0f} MiB "
                     f"({r['warm_up']:.0f} s) | {r['rss_end'][0] / 2**20:.0f} MiB | {growth * 100:+.1f}% "
                     f"({'met' if growth < 0.10 else 'MISSED'} < 10%) | {r['rss_max'] / 2**20:.0f} MiB | "
                     f"{r['rss_start'][1] / 2**20:.0f} → {r['rss_end'][1] / 2**20:.0f} MiB | {r['messages']:,} | "
                     f"{r['duplicates']} | {r['telegram_429']} | {r['server_errors']} + {r['bot_errors']} |")
    for db, r in by_db.items():
        code = r["kinds"]["code"]
        achieved = len(code.latencies) / (code.last_done - code.first_sent) if code.last_done else 0
        verdict = "met" if achieved >= 0.98 * code.rate else "MISSED"
        lines.append(f"\n- {db}: code verifications achieved {achieved:.1f}/s of {code.rate:g}/s ({verdict}); "
                     f"errors {sum(k.error_count(EXPECTED[n]) for n, k in r['kinds'].items())} (target 0)"
                     + ("" if not check(r) else f"; PROBLEMS: {'; '.join(check(r))}")
                     + f"; seconds holding a code check slower than 1 s: {code.slow_seconds()} of "
                     f"{r['duration']:.0f}; load average during the run {r['load'][0]:.1f}–{r['load'][1]:.1f} "
                     f"on {os.cpu_count()} cores")
    return "\n".join(lines)
