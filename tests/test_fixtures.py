"""The shared database fixtures hand every test a clean, migrated database, also when a PostgreSQL schema is
reused from an earlier test (tests/conftest.py, ``_SpareSchemas``), and a world of its own when a world fixture
copies what it built for an earlier test (tests/worlds.py)."""
from __future__ import annotations

import contextlib
import datetime as dt
import uuid

import asyncpg
import pytest

from core.db.engine import create_engine
from core.services import registry
from tests.conftest import PG_URL, T0, VALID_IINS, migrate_from_template, pg_or_skip, pg_schema
from tests.conftest import _pg_execute as pg_execute
from tests.conftest import test_settings as settings_for


async def _rows(url: str) -> dict[str, object]:
    schema = url.rsplit("search_path=", 1)[1]
    conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg", "postgresql"))
    try:
        tables = [r["tablename"] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename", schema)]
        counts = {t: await conn.fetchval(f'SELECT count(*) FROM "{schema}"."{t}"') for t in tables}
        counts["next clinic id"] = await conn.fetchval(f"SELECT nextval('\"{schema}\".clinics_id_seq')")
        return counts
    finally:
        await conn.close()


async def _fill_and_use(url: str) -> None:
    """Migrate from the template, then leave rows behind as a test would."""
    from core.clock import ManualClock
    from core.db.uow import UnitOfWorkFactory
    from core.services import Context
    from tests.conftest import T0

    await migrate_from_template(url)
    engine = create_engine(url)
    try:
        ctx = Context.build(settings_for(url), UnitOfWorkFactory(engine), ManualClock(T0))
        clinic = await registry.create_clinic(ctx, "Left behind")
        await registry.add_doctor(ctx, clinic.id, "Doctor", "+77011112233")
    finally:
        await engine.dispose()


def test_a_reused_postgres_schema_starts_as_clean_as_a_fresh_one():
    """A schema a test filled and left rows in is reused by the next test (renamed to its name) with no row of
    the earlier test, the migrations' seed rows back and every sequence from its start: exactly what a replay of
    the template gives."""
    import asyncio

    with pg_schema() as first:
        asyncio.run(_fill_and_use(first))
        fresh = asyncio.run(_rows(first))  # rows left behind, and a sequence moved on
        first_oid = asyncio.run(_schema_oid(first.rsplit("=", 1)[1]))
    with pg_schema() as second:
        asyncio.run(migrate_from_template(second))
        reused = asyncio.run(_rows(second))
        assert asyncio.run(_schema_oid(second.rsplit("=", 1)[1])) == first_oid, "the first schema, renamed"
    assert fresh["clinics"] == 1 and fresh["doctors"] == 1
    assert reused["clinics"] == reused["doctors"] == 0
    assert reused["next clinic id"] == 1
    assert reused["alembic_version"] == 1 and reused["service_rules"] == fresh["service_rules"] > 0
    assert set(reused) == set(fresh)


def test_a_schema_whose_tables_a_test_changed_is_not_reused():
    """A test that ran DDL on its database (an Alembic downgrade, a dropped table) leaves a schema the next test
    must not get: the spare is dropped and the next test gets the template's replay."""
    import asyncio

    with pg_schema() as changed:
        asyncio.run(migrate_from_template(changed))
        name = changed.rsplit("=", 1)[1]
        asyncio.run(pg_execute(f'DROP TABLE "{name}".deaths'))
    with pg_schema() as following:
        asyncio.run(migrate_from_template(following))
        tables = asyncio.run(_rows(following))
        assert "deaths" in tables
    assert asyncio.run(_schema_oid(name)) is None, "the changed schema was dropped"


async def _schema_oid(name: str) -> int | None:
    conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg", "postgresql"))
    try:
        return await conn.fetchval("SELECT oid FROM pg_namespace WHERE nspname = $1", name)
    finally:
        await conn.close()


# --- worlds built once per process (tests/worlds.py) -----------------------------------------------------------------

_BUILDS: list[str] = []


async def _one_clinic(ctx, name: str):
    """A world: a clinic with a doctor and a patient, and the clock moved on as a builder may move it."""
    import datetime as dt

    _BUILDS.append(name)
    clinic = await registry.create_clinic(ctx, name)
    doctor = await registry.add_doctor(ctx, clinic.id, "Doctor", "+77011112233")
    ctx.clock.advance(dt.timedelta(minutes=7))
    patient = (await registry.upsert_patient(ctx, clinic.id, VALID_IINS[0], "Asel N.", "87011234567", "kk")).patient
    return {"clinic": clinic, "doctor": doctor, "patient": patient}


@contextlib.asynccontextmanager
async def _database(kind: str, tmp_path, name: str):
    """A fresh test database of the template's, and a services Context on it (as the engine and ctx fixtures)."""
    from core.clock import ManualClock
    from core.db.uow import UnitOfWorkFactory
    from core.services import Context
    from tests.conftest import _SPARES

    schema = f"t_{uuid.uuid4().hex[:12]}"  # as pg_schema() makes one, inside the test's event loop
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / f'{name}.db'}"
    else:
        await pg_execute(f'CREATE SCHEMA "{schema}"')
        url = f"{PG_URL}?search_path={schema}"
    try:
        await migrate_from_template(url)
        engine = create_engine(url)
        try:
            yield Context.build(settings_for(url), UnitOfWorkFactory(engine), ManualClock(T0))
        finally:
            await engine.dispose()
    finally:
        if kind != "sqlite" and not _SPARES.keep(schema):
            await pg_execute(f'DROP SCHEMA "{schema}" CASCADE')


async def _dump(ctx) -> dict[str, list]:
    """Every row of every table, in primary key order."""
    import sqlalchemy as sa

    from core.db import tables as t
    async with ctx.uow.engine.connect() as conn:
        return {table.name: [tuple(row) for row in (await conn.execute(
                    sa.select(table).order_by(*table.primary_key.columns))).all()]
                for table in t.metadata.sorted_tables}


async def _built_twice(kind: str, tmp_path, name: str) -> None:
    """The two builds after which a world is kept: the first test's, and the second's (a key seen once is not)."""
    from tests.worlds import built_once

    for n in (1, 2):
        async with _database(kind, tmp_path, f"build {n}") as ctx:
            await built_once(ctx, _one_clinic, name)
    assert _BUILDS.count(name) == 2


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_world_built_twice_is_copied_for_each_later_test_a_world_of_its_own(kind, tmp_path, monkeypatch):
    """The kept build's database, row for row (ids, keys, audit chain, sequences), the clock where the builder
    left it and an equal but separate result; what a test then writes stays in its own database."""
    from tests.worlds import built_once

    if kind == "postgres":
        pg_or_skip()
    monkeypatch.delenv("RASTAU_TEST_BUILD_WORLDS", raising=False)
    name = f"Copied {kind}"
    async with _database(kind, tmp_path, "first") as first:
        await built_once(first, _one_clinic, name)
        assert _BUILDS.count(name) == 1
    async with _database(kind, tmp_path, "second") as second:
        built = await built_once(second, _one_clinic, name)
        assert _BUILDS.count(name) == 2
        rows = await _dump(second)
        assert rows["clinics"] and rows["audit_log"]
        await registry.create_clinic(second, "Written after the build")  # not in the world
        async with _database(kind, tmp_path, "third") as third:
            copy = await built_once(third, _one_clinic, name)
            assert _BUILDS.count(name) == 2, "the third test got a copy, not a build"
            assert copy == built and copy is not built and copy["clinic"] is not built["clinic"]
            assert third.clock.now() == second.clock.now() == T0 + dt.timedelta(minutes=7)
            assert await _dump(third) == rows
            copy["clinic"].name = "changed by the third test"
            late = await registry.create_clinic(third, "The third test's")
            assert late.id == rows["clinics"][-1][0] + 1, "sequences continue where the build left them"
            async with _database(kind, tmp_path, "fourth") as fourth:
                again = await built_once(fourth, _one_clinic, name)
                assert again == built and await _dump(fourth) == rows
    assert _BUILDS.count(name) == 2


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_database_written_to_before_the_world_gets_the_world_built_on_top(kind, tmp_path, monkeypatch):
    """A copy would drop what another fixture wrote before the world: such a test gets a full build."""
    from tests.worlds import built_once

    if kind == "postgres":
        pg_or_skip()
    monkeypatch.delenv("RASTAU_TEST_BUILD_WORLDS", raising=False)
    name = f"Written first {kind}"
    await _built_twice(kind, tmp_path, name)
    async with _database(kind, tmp_path, "third") as third:
        earlier = await registry.create_clinic(third, "Another fixture's")
        world = await built_once(third, _one_clinic, name)
        assert _BUILDS.count(name) == 3
        assert world["clinic"].id == earlier.id + 1
        assert {row[1] for row in (await _dump(third))["clinics"]} == {"Another fixture's", name}


async def test_other_settings_or_another_clock_make_another_world(tmp_path, monkeypatch):
    """The world is a function of the settings and the clock's start too: a change in either builds anew."""
    from tests.worlds import built_once

    monkeypatch.delenv("RASTAU_TEST_BUILD_WORLDS", raising=False)
    name = "Keyed"
    await _built_twice("sqlite", tmp_path, name)
    async with _database("sqlite", tmp_path, "later") as later:
        later.clock.advance(dt.timedelta(seconds=1))
        await built_once(later, _one_clinic, name)
    async with _database("sqlite", tmp_path, "latest") as latest:
        longer = latest.settings.code_validity_minutes + 1
        latest.settings = latest.settings.model_copy(update={"code_validity_minutes": longer})
        await built_once(latest, _one_clinic, name)
    assert _BUILDS.count(name) == 4
