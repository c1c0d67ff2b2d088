"""Shared fixtures: a migrated database on SQLite (a real file) and on the real PostgreSQL, a manual clock,
and a services Context with test secrets."""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import secrets
import uuid

import pytest

from core.clock import ManualClock
from core.config import Mode, Settings
from core.db.engine import create_engine
from core.db.migrate import upgrade_to_head
from core.db.uow import UnitOfWorkFactory
from core.services import Context, registry

PG_URL = os.environ.get("RASTAU_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
T0 = dt.datetime(2026, 11, 25, 4, 0, tzinfo=dt.UTC)  # 09:00 in Almaty


def _pg_reachable() -> str | None:
    import asyncpg

    async def probe():
        conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg", "postgresql"), timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable", reported verbatim
        return f"{type(exc).__name__}: {exc}"


_PG_PROBLEM: str | None | bool = False


def pg_or_skip() -> None:
    """Skip with a visible reason when PostgreSQL is down; under CI=true that is a failure instead."""
    global _PG_PROBLEM
    if _PG_PROBLEM is False:
        _PG_PROBLEM = _pg_reachable()
    if _PG_PROBLEM:
        message = f"PostgreSQL at {PG_URL} is not reachable ({_PG_PROBLEM})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " — CI requires it")
        pytest.skip(message)


def test_settings(database_url: str, **overrides) -> Settings:
    values = dict(mode=Mode.DEV, database_url=database_url, code_hmac_key=secrets.token_urlsafe(32),
                  template_key=secrets.token_urlsafe(32), api_key_pepper=secrets.token_urlsafe(32))
    values.update(overrides)
    return Settings(_env_file=None, **values)


@contextlib.contextmanager
def pg_schema():
    """A fresh schema in the PostgreSQL test database, dropped afterwards (skips, or fails under CI, when
    PostgreSQL is down)."""
    pg_or_skip()
    import asyncpg

    schema = f"t_{uuid.uuid4().hex[:12]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg", "postgresql"))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?search_path={schema}"
    finally:
        asyncio.run(run(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """A fresh, empty database: a new SQLite file, or a new schema in the PostgreSQL `test` database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'rastau.db'}"
        return
    with pg_schema() as url:
        yield url


@pytest.fixture
async def engine(db_url):
    eng = create_engine(db_url)
    await upgrade_to_head(eng)
    yield eng
    await eng.dispose()


@pytest.fixture
def clock():
    return ManualClock(T0)


@pytest.fixture
def settings(db_url):
    return test_settings(db_url)


@pytest.fixture
def ctx(engine, settings, clock):
    return Context.build(settings, UnitOfWorkFactory(engine), clock)


VALID_IINS = ["900101300017", "850315400015", "021231500015", "880725400129", "991231300457"]


@pytest.fixture
async def clinic_world(ctx):
    """One clinic with a doctor, an admin and two patients."""
    clinic = await registry.create_clinic(ctx, "Emhana No. 5")
    doctor = await registry.add_doctor(ctx, clinic.id, "Aidos Seitkali", "8 (701) 111-22-33")
    admin = await registry.add_admin(ctx, clinic.id, "Gulnara Admin", "+7 702 555 44 33")
    p1 = (await registry.upsert_patient(ctx, clinic.id, VALID_IINS[0], "Asel N.", "87011234567", "kk")).patient
    p2 = (await registry.upsert_patient(ctx, clinic.id, VALID_IINS[1], "Ivan P.", "+7 705 765 43 21", "ru")).patient
    return type("World", (), dict(clinic=clinic, doctor=doctor, admin=admin, p1=p1, p2=p2))
