"""What the HTTP benchmarks share: a migrated database with its secrets, and a server process to wait for."""
from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import socket
import subprocess
from pathlib import Path

import aiohttp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core.clock import SystemClock
from core.codes import generate_code
from core.config import Settings
from core.db.engine import create_engine
from core.db.migrate import upgrade_to_head
from core.db.uow import UnitOfWorkFactory
from core.services import Context

ROOT = Path(__file__).resolve().parent.parent


async def fresh_context(database_url: str) -> tuple[dict[str, str], AsyncEngine, Context]:
    """Migrate the database and build a Context on the system clock, with new secrets that a server process
    started on the same database must be given (`server_env`)."""
    keys = {"code": secrets.token_urlsafe(32), "template": secrets.token_urlsafe(32),
            "pepper": secrets.token_urlsafe(32)}
    settings = Settings(_env_file=None, mode="dev", database_url=database_url, code_hmac_key=keys["code"],
                        template_key=keys["template"], api_key_pepper=keys["pepper"], single_frame_face=True)
    engine = create_engine(database_url)
    await upgrade_to_head(engine)
    return keys, engine, Context.build(settings, UnitOfWorkFactory(engine), SystemClock())


def server_env(database_url: str, keys: dict[str, str], **extra: str) -> dict[str, str]:
    """The environment for `python -m server` or `python -m bot` on the benchmark's database: production mode
    with the benchmark's secrets, and no RASTAU_ setting inherited from the shell (`make` exports some)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RASTAU_")}
    env.update(RASTAU_MODE="production", RASTAU_DATABASE_URL=database_url, RASTAU_CODE_HMAC_KEY=keys["code"],
               RASTAU_TEMPLATE_KEY=keys["template"], RASTAU_API_KEY_PEPPER=keys["pepper"],
               RASTAU_SIGNING_KEY="c2lnbmluZy1rZXktb2YtdGhlLWJlbmNobWFyay0xMjM=",  # 32 bytes: the benchmark's
               RASTAU_LOG_LEVEL="WARNING", RASTAU_LOG_FORMAT="json", RASTAU_SINGLE_FRAME_FACE="1",
               PYTHONPATH=str(ROOT), **extra)
    return env


async def store_known_codes(conn: AsyncConnection, ctx: Context, visit_ids: list[int],
                            now: dt.datetime) -> list[tuple[int, str]]:
    """Give each visit a fresh code the benchmark knows, stored as the server stores one (an HMAC of
    generation 1), valid for 13 hours from `now`."""
    engine = conn.engine
    codes = [(visit_id, generate_code()) for visit_id in visit_ids]
    await conn.execute(text(
        "INSERT INTO visit_codes (visit_id, generation, code_hash, issued_at, expires_at) "
        "VALUES (:visit, 1, :hash, :issued, :expires)"),
        [{"visit": v, "hash": ctx.hasher.digest(v, 1, c), "issued": db_time(engine, now),
          "expires": db_time(engine, now + dt.timedelta(hours=13))} for v, c in codes])
    await conn.execute(text("UPDATE visits SET code_generation = 1 WHERE id = :visit"),  # as CodeRepo.put does
                       [{"visit": v} for v, _ in codes])
    return codes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def db_time(engine, moment: dt.datetime):
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
