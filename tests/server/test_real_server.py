"""`python -m server` as a real process on 127.0.0.1: operator CLI set-up, the in-person flow with real face
workers and real photos, the online flow, SIGTERM → exit 0; and production mode refusing to start without secrets."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

import server.__main__ as server_entry
from core.config import MissingSecrets
from tests.conftest import migrate_from_template

pytestmark = pytest.mark.slow  # python -m server as a process

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
FACES = ROOT / "tests" / "fixtures" / "faces"
READY_TIMEOUT_S = 240  # two busy cores load the dlib models slowly


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RASTAU_")}
    env.update(RASTAU_MODE="dev", RASTAU_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'rastau.db'}",
               RASTAU_CODE_HMAC_KEY=secrets.token_urlsafe(32), RASTAU_TEMPLATE_KEY=secrets.token_urlsafe(32),
               RASTAU_API_KEY_PEPPER=secrets.token_urlsafe(32), RASTAU_FACE_WORKERS="1",
               RASTAU_LOG_FORMAT="json", RASTAU_SINGLE_FRAME_FACE="1", PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def rastau(env: dict, cwd: Path, *args: str) -> str:
    done = subprocess.run([str(BIN / "rastau"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def wait_for(session: aiohttp.ClientSession, url: str, status: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            async with session.get(url) as response:
                if response.status == status:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.5)
    pytest.fail(f"{url} did not answer {status} within {timeout} s")


@dataclasses.dataclass
class ServerExit:
    """How a `python -m server` process ended, filled in once it has stopped."""
    returncode: int | None = None
    out: str = ""
    err: str = ""


def clinic_with_key(env: dict, cwd: Path, label: str) -> tuple[str, str]:
    """Through the operator's commands: a migrated database, clinic 1 with doctor 1, and a clinic_system + webcam
    key; the key, and what add-api-key printed."""
    rastau(env, cwd, "migrate")
    rastau(env, cwd, "add-clinic", "Polyclinic No. 5")
    rastau(env, cwd, "add-doctor", "--clinic", "1", "--name", "Aidos Seitkali", "--phone", "8 701 111 22 33")
    printed = rastau(env, cwd, "add-api-key", "--clinic", "1", "--scope", "clinic_system", "--scope", "webcam",
                     "--label", label)
    return next(word for word in printed.split() if word.startswith("rk_")), printed


async def enrolled_patient(session: aiohttp.ClientSession, base: str, h: dict, **fields: str) -> int:
    """Through the API, as a clinic's system does it: a patient, their consent, and one enrolled face photo."""
    async with session.post(f"{base}/api/v1/patients", headers=h, json={
            "iin": "900101300017", "full_name": "Barack O.", "phone": "+77011234567", **fields}) as r:
        patient: int = (await r.json())["id"]
    async with session.post(f"{base}/api/v1/patients/{patient}/consent", headers=h,
                            json={"recorded_by": "Nurse Dana"}) as r:
        assert r.status == 200
    form = aiohttp.FormData()
    form.add_field("image", (FACES / "obama/obama1.jpg").read_bytes(), filename="1.jpg", content_type="image/jpeg")
    async with session.put(f"{base}/api/v1/patients/{patient}/face", headers=h, data=form) as r:
        assert await r.json() == {"enrolled": 1}
    return patient


@contextlib.asynccontextmanager
async def running_server(env: dict, cwd: Path, stop_timeout: float = 60):
    """`python -m server` as a process for the block; SIGTERM afterwards (kill if it does not stop in time), and
    its exit status and output in the yielded :class:`ServerExit`."""
    process = subprocess.Popen([sys.executable, "-m", "server"], env=env, cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    ended = ServerExit()
    try:
        yield ended
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            ended.out, ended.err = process.communicate(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            ended.out, ended.err = process.communicate()
        ended.returncode = process.returncode


async def test_real_server_in_person_and_online_flows_then_sigterm(tmp_path):
    port = free_port()
    env = server_env(tmp_path, RASTAU_SERVER_PORT=str(port))
    key, printed = clinic_with_key(env, tmp_path, "reception")
    assert "shown only this once" in printed
    base, h = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    async with running_server(env, tmp_path) as ended, aiohttp.ClientSession() as session:
        await wait_for(session, f"{base}/healthz", 200, 60)
        await wait_for(session, f"{base}/readyz", 200, READY_TIMEOUT_S)
        patient = await enrolled_patient(session, base, h)
        start = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).isoformat()
        visit = {"doctor_id": 1, "patient_id": patient, "start": start, "duration_minutes": 20,
                 "service_code": "A01"}
        async with session.post(f"{base}/api/v1/visits", headers=h, json={**visit, "mode": "in_person"}) as r:
            in_person = (await r.json())["id"]
        async with session.post(f"{base}/api/v1/visits/{in_person}/face", data=(FACES / "obama/obama2.jpg")
                                .read_bytes(), headers={**h, "Content-Type": "image/jpeg"}) as r:
            assert await r.json() == {"decision": "match"}
        async with session.get(f"{base}/api/v1/visits/{in_person}", headers=h) as r:
            assert (await r.json())["state"] == "verified"

        async with session.post(f"{base}/api/v1/visits", headers=h, json={**visit, "mode": "online"}) as r:
            online = (await r.json())["id"]
        async with session.post(f"{base}/api/v1/visits/{online}/face", data=(FACES / "obama/obama2.jpg")
                                .read_bytes(), headers={**h, "Content-Type": "image/jpeg"}) as r:
            assert r.status == 409
        async with session.post(f"{base}/api/v1/visits/{online}/code-requests", headers=h) as r:
            assert r.status == 409 and (await r.json())["code"] == "patient_unreachable"  # no chat linked
        async with session.post(f"{base}/api/v1/visits/{online}/code", headers=h, json={"code": "000000"}) as r:
            assert (await r.json())["result"] == "no_code"  # none was queued, none exists
    assert ended.returncode == 0, ended.err[-3000:]
    assert '"server stopped"' in ended.err
    assert key not in ended.err + ended.out and "900101300017" not in ended.err + ended.out


def test_production_without_secrets_refuses_to_start_naming_each(tmp_path, monkeypatch):
    """python -m server's main() in this process: it refuses before it serves or starts anything."""
    env = server_env(tmp_path, RASTAU_MODE="production")
    for name in [name for name in os.environ if name.startswith("RASTAU_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("RASTAU_") and name not in ("RASTAU_CODE_HMAC_KEY", "RASTAU_TEMPLATE_KEY",
                                                       "RASTAU_API_KEY_PEPPER"):
            monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # no .env
    with pytest.raises(MissingSecrets) as refused:
        server_entry.main()
    for name in ("RASTAU_CODE_HMAC_KEY", "RASTAU_TEMPLATE_KEY", "RASTAU_API_KEY_PEPPER"):
        assert name in str(refused.value)


def _listening_sockets(port: int) -> int:
    """How many sockets listen on 127.0.0.1:port (one per server process with SO_REUSEPORT)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if row.split()[1].endswith(f":{port:04X}") and row.split()[3] == "0A")


async def test_several_server_processes_share_one_port_and_stop_together(tmp_path):
    port = free_port()
    env = server_env(tmp_path, RASTAU_SERVER_PORT=str(port), RASTAU_SERVER_PROCESSES="2")
    await migrate_from_template(env["RASTAU_DATABASE_URL"])  # the CLI's migrate is the first test's
    async with running_server(env, tmp_path, stop_timeout=90) as ended, aiohttp.ClientSession() as session:
        await wait_for(session, f"http://127.0.0.1:{port}/healthz", 200, 60)
        for _ in range(300):  # the second process starts its own interpreter: up to a minute on busy cores
            if _listening_sockets(port) == 2:
                break
            await asyncio.sleep(0.2)
        assert _listening_sockets(port) == 2
        for _ in range(20):  # new connections, spread by the kernel: every one is answered
            async with aiohttp.ClientSession() as fresh, fresh.get(f"http://127.0.0.1:{port}/healthz") as r:
                assert r.status == 200
    assert ended.returncode == 0, ended.err[-3000:]
    assert '"server stopped"' in ended.err and '"processes": 2' in ended.err
    assert _listening_sockets(port) == 0
