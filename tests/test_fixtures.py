"""The shared database fixtures hand every test a clean, migrated database, also when a PostgreSQL schema is
reused from an earlier test (tests/conftest.py, ``_SpareSchemas``)."""
from __future__ import annotations

import asyncpg

from core.db.engine import create_engine
from core.services import registry
from tests.conftest import PG_URL, migrate_from_template, pg_schema
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
