"""Helpers for the security tests: `python -m server` as a real process (its logs in files, so a chatty server
never blocks on a full pipe), a Context sharing that server's secrets (and clock) for seeding, PostgreSQL
schemas, and the resident memory of a process tree."""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from core.db.engine import create_engine
from core.db.uow import UnitOfWorkFactory
from core.services import Context
from tests.conftest import migrate_from_template, test_settings

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 240  # two busy cores load the dlib models slowly
PAGE = os.sysconf("SC_PAGE_SIZE")
PINNED_HOUR = dt.datetime(2026, 11, 25, 4, 0, tzinfo=dt.UTC)  # 09:00 Almaty, the start of a clock hour


def pinned_clock_offset() -> float:
    """Seconds that move the system clock to PINNED_HOUR now. Hourly caps count per clock hour: a seeding
    Context and server processes all shifted by this offset share one hour, however near the real hour's turn
    the test starts (instead of waiting for the turn to pass)."""
    return (PINNED_HOUR - dt.datetime.now(dt.UTC)).total_seconds()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def new_secrets() -> dict[str, str]:
    return {"code_hmac_key": secrets.token_urlsafe(32), "template_key": secrets.token_urlsafe(32),
            "api_key_pepper": secrets.token_urlsafe(32)}


@dataclass
class Seeded:
    """A database URL, the secrets its server must run with, and a Context (the system clock, shifted by
    ``clock_offset_seconds`` as its servers' are) to seed it."""
    url: str
    keys: dict[str, str]
    clock_offset_seconds: float = 0.0
    ctx: Context | None = None
    migrated: bool = False

    async def open(self) -> Context:
        """A Context on the database, migrated on the first open (a copy of the process's migrated template, as
        Alembic would leave it: ``tests.conftest.migrate_from_template``)."""
        if not self.migrated:
            await migrate_from_template(self.url)
            self.migrated = True
        engine = create_engine(self.url)
        settings = test_settings(self.url, **self.keys, clock_offset_seconds=self.clock_offset_seconds)
        self.ctx = Context.build(settings, UnitOfWorkFactory(engine), settings.clock())
        return self.ctx

    async def close(self) -> None:
        if self.ctx is not None:
            await self.ctx.uow.engine.dispose()


@dataclass
class ServerProcess:
    """`python -m server` on 127.0.0.1 with a database, secrets and clock offset of the test's choosing."""
    url: str
    keys: dict[str, str]
    workdir: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    clock_offset_seconds: float = 0.0
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RASTAU_")}
        env.update(RASTAU_MODE="production", RASTAU_DATABASE_URL=self.url, RASTAU_SERVER_PORT=str(self.port),
                   RASTAU_CODE_HMAC_KEY=self.keys["code_hmac_key"], RASTAU_TEMPLATE_KEY=self.keys["template_key"],
                   RASTAU_API_KEY_PEPPER=self.keys["api_key_pepper"], RASTAU_FACE_WORKERS="1",
                   RASTAU_SIGNING_KEY="c2lnbmluZy1rZXktb2YtdGhlLXNlY3VyaXR5LXRlc3Q=",  # 32 bytes: a test key
                   RASTAU_LOG_FORMAT="json", RASTAU_LOG_LEVEL="WARNING", RASTAU_SINGLE_FRAME_FACE="1",
                   PYTHONPATH=str(ROOT))
        if self.clock_offset_seconds:  # production refuses a shifted clock; with every secret set, dev runs the same
            env.update(RASTAU_MODE="dev", RASTAU_CLOCK_OFFSET_SECONDS=repr(self.clock_offset_seconds))
        env.update(self.env_extra)
        return env

    def start(self) -> ServerProcess:
        self.port = self.port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._out = open(self.workdir / f"server-{self.port}.out", "w")
        self._err = open(self.workdir / f"server-{self.port}.err", "w")
        self.process = subprocess.Popen([sys.executable, "-m", "server"], env=self.env(), cwd=self.workdir,
                                        stdout=self._out, stderr=self._err)
        return self

    def stderr(self) -> str:
        return (self.workdir / f"server-{self.port}.err").read_text(errors="replace")

    async def wait_ready(self, path: str = "/readyz", timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}: {self.stderr()[-3000:]}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(self.base + path) as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.base}{path} not 200 within {timeout} s: {self.stderr()[-3000:]}")

    def stop(self) -> int:
        """SIGTERM, then wait; returns the exit code (a kill after 60 s counts as a failure)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return -9
        self._out.close()
        self._err.close()
        return self.process.returncode


def tree_pids(pid: int) -> list[int]:
    """A process and all its descendants (the face workers and their resource tracker), from /proc."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return found


def rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return 0


def peak_rss(pid: int) -> int:
    """VmHWM: the most resident memory this process has ever held (the kernel tracks it; nothing is missed
    between samples)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


