"""What the HTTP benchmarks share: a migrated database with its secrets, and a server process to wait for."""
from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import socket
import subprocess

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from core.clock import SystemClock
from core.config import Settings
from core.db.engine import create_engine
from core.db.migrate import upgrade_to_head
from core.db.uow import UnitOfWorkFactory
from core.services import Context


async def fresh_context(database_url: str) -> tuple[dict[str, str], AsyncEngine, Context]:
    """Migrate the database and build a Context on the system clock, with new secrets that a server process
    started on the same database must be given (see `server_env` in each benchmark)."""
    keys = {"code": secrets.token_urlsafe(32), "template": secrets.token_urlsafe(32),
            "pepper": secrets.token_urlsafe(32)}
    settings = Settings(_env_file=None, mode="dev", database_url=database_url, code_hmac_key=keys["code"],
                        template_key=keys["template"], api_key_pepper=keys["pepper"])
    engine = create_engine(database_url)
    await upgrade_to_head(engine)
    return keys, engine, Context.build(settings, UnitOfWorkFactory(engine), SystemClock())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def db_time(engine: AsyncEngine, moment: dt.datetime):
    """How UtcDateTime stores a moment, for raw inserts: naive UTC text on SQLite, aware on PostgreSQL."""
    if engine.dialect.name == "sqlite":
        return moment.astimezone(dt.UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    return moment


async def wait_healthy(session: aiohttp.ClientSession, base: str, process: subprocess.Popen) -> None:
    for _ in range(600):
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            async with session.get(base + "/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("server did not become healthy")
