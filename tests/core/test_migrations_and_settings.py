import datetime as dt
import logging

import pytest
from pydantic import ValidationError

from core.cli import main as rastau
from core.clock import SystemClock
from core.config import MissingSecrets, Mode, Settings
from core.db.engine import create_engine
from core.db.migrate import SchemaNotCurrent, current_revision, ensure_schema_current, head_revision, upgrade_to_head
from core.logs import configure_logging, get_logger
from tests import raw_rows
from tests.commands import run_command
from tests.conftest import log_as_the_product


async def test_empty_database_upgrades_to_head_and_is_accepted(db_url):
    engine = create_engine(db_url)
    try:
        assert await current_revision(engine) is None
        with pytest.raises(SchemaNotCurrent, match="rastau migrate"):
            await ensure_schema_current(engine)
        await upgrade_to_head(engine)
        assert await current_revision(engine) == head_revision()
        await ensure_schema_current(engine)
    finally:
        await engine.dispose()


async def test_old_schema_is_refused_with_how_to_migrate(db_url):
    engine = create_engine(db_url)
    try:
        await upgrade_to_head(engine)
        async with engine.begin() as conn:
            await conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0000_old'")
        with pytest.raises(SchemaNotCurrent) as err:
            await ensure_schema_current(engine)
        assert "0000_old" in str(err.value) and "rastau migrate" in str(err.value)
    finally:
        await engine.dispose()


async def test_sqlite_runs_wal_full_sync_with_busy_timeout(tmp_path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        async with engine.connect() as conn:
            mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
            sync = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar()
            busy = (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar()
            fks = (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar()
        assert (mode, sync, fks) == ("wal", 2, 1) and busy >= 5000
    finally:
        await engine.dispose()


async def test_a_transaction_that_fails_to_begin_does_not_block_the_next_writer(tmp_path, monkeypatch):
    """A BEGIN that fails (e.g. another process held SQLite past the busy timeout) must hand the in-process
    writer turn and the connection back, or every later write would wait forever."""
    import asyncio
    import datetime as dt

    from sqlalchemy.exc import OperationalError
    from sqlalchemy.ext.asyncio import AsyncConnection

    from core.db.uow import UnitOfWorkFactory
    from core.errors import DatabaseUnavailable

    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'rastau.db'}")
    await upgrade_to_head(engine)
    uow = UnitOfWorkFactory(engine)
    real_begin = AsyncConnection.begin

    def locked_out(self):
        raise OperationalError("BEGIN IMMEDIATE", {}, Exception("database is locked"))

    monkeypatch.setattr(AsyncConnection, "begin", locked_out)
    with pytest.raises(DatabaseUnavailable) as failed:  # the driver's error, in core's words
        async with uow():
            pass
    assert isinstance(failed.value.__cause__, OperationalError)
    monkeypatch.setattr(AsyncConnection, "begin", real_begin)

    async def write() -> None:
        async with uow() as work:
            await work.audit.append(dt.datetime.now(dt.UTC), "admin", "test.write", "test:1", {}, clinic_id=None)
            await work.commit()

    await asyncio.wait_for(write(), timeout=10)
    assert engine.sync_engine.pool.checkedout() == 0
    await engine.dispose()


def test_production_without_secrets_refuses_and_names_each():
    settings = Settings(_env_file=None, mode=Mode.PRODUCTION)
    with pytest.raises(MissingSecrets) as err:
        settings.require_secrets(bot=True)
    text = str(err.value)
    for name in ("RASTAU_CODE_HMAC_KEY", "RASTAU_TEMPLATE_KEY", "RASTAU_API_KEY_PEPPER", "RASTAU_BOT_TOKEN"):
        assert name in text


def test_production_refuses_weak_secret():
    settings = Settings(_env_file=None, mode=Mode.PRODUCTION, code_hmac_key="short", template_key="x" * 43,
                        api_key_pepper="y" * 43)
    with pytest.raises(MissingSecrets, match="RASTAU_CODE_HMAC_KEY is too short"):
        settings.require_secrets()


def test_dev_mode_invents_secrets_and_says_so_loudly(capsys):
    settings = Settings(_env_file=None, mode=Mode.DEV).require_secrets()
    assert len(settings.code_key_bytes()) >= 32 and len(settings.template_key_bytes()) == 32
    assert "DEV MODE" in capsys.readouterr().err


def test_production_refuses_a_shifted_clock_which_dev_runs_on(monkeypatch):
    """RASTAU_CLOCK_OFFSET_SECONDS lets tests pin the clock hour of server processes; production never runs on it."""
    with pytest.raises(ValidationError, match="RASTAU_CLOCK_OFFSET_SECONDS is for tests"):
        Settings(_env_file=None, mode=Mode.PRODUCTION, clock_offset_seconds=-3600)
    monkeypatch.setenv("RASTAU_MODE", "production")  # as `python -m server` reads it
    monkeypatch.setenv("RASTAU_CLOCK_OFFSET_SECONDS", "60")
    with pytest.raises(ValidationError, match="production runs on the system clock"):
        Settings(_env_file=None)
    assert isinstance(Settings(_env_file=None, mode=Mode.PRODUCTION, clock_offset_seconds=0).clock(), SystemClock)

    shifted = Settings(_env_file=None, mode=Mode.DEV, clock_offset_seconds=-3600).clock().now()
    assert abs(shifted - (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))) < dt.timedelta(seconds=5)


def test_migrate_cli_on_an_empty_file(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    done = run_command(rastau, "rastau", {"RASTAU_DATABASE_URL": url}, "migrate")
    assert done.returncode == 0, done.stderr
    assert head_revision() in done.stdout


def test_logs_never_carry_a_whole_iin_or_secret_fields(capfd):
    configure_logging("INFO", "json")
    try:
        log = get_logger("t")
        log.info("patient 900101300017 registered", iin="900101300017", code="123456", bot_token="123:ABC",
                 encoding=[0.1] * 128, frame=b"\xff\xd8jpeg", status_code=200)
        logging.getLogger("stdlib").warning("lookup for IIN %s failed", "850315400015")
        err = capfd.readouterr().err
    finally:
        log_as_the_product()  # the next test in this process must not log into this test's capture

    assert "900101300017" not in err and "850315400015" not in err
    assert "********0017" in err and "********0015" in err
    assert "123456" not in err and "123:ABC" not in err and "0.1, 0.1" not in err and "jpeg" not in err
    assert '"status_code": 200' in err


def test_env_example_documents_every_setting_with_a_comment():
    from pathlib import Path

    lines = (Path(__file__).resolve().parents[2] / ".env.example").read_text().splitlines()
    for name in Settings.model_fields:
        variable = f"RASTAU_{name.upper()}="
        at = next((n for n, line in enumerate(lines) if line.startswith(variable)), None)
        assert at is not None, f"{variable} is not in .env.example"
        assert lines[at - 1].startswith("#"), f"{variable} in .env.example has no comment above it"


def _schema_drift(sync_conn, metadata, *, defaults: bool) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(sync_conn, opts={"compare_type": True, "compare_server_default": defaults})
    return compare_metadata(context, metadata)


async def test_migrations_build_exactly_the_tables_the_code_defines(db_url):
    """What Alembic's migrations build and what core/db/tables.py declares must agree (tables, columns, types,
    nullability, indexes, unique and foreign keys; on PostgreSQL the server defaults too: SQLite reflects a
    default as the text it was written with, which never compares equal). A drift found here is fixed in
    tables.py or in a new migration, never in an old one."""
    from core.db.tables import metadata

    engine = create_engine(db_url)
    try:
        await upgrade_to_head(engine)
        async with engine.connect() as conn:
            drift = await conn.run_sync(_schema_drift, metadata, defaults=conn.dialect.name == "postgresql")
    finally:
        await engine.dispose()
    assert drift == []


async def test_the_schema_comparison_sees_a_column_the_migrations_lack(tmp_path):
    import sqlalchemy as sa

    from core.db.tables import metadata

    widened = sa.MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.tables.values():
        table.to_metadata(widened)
    widened.tables["clinics"].append_column(sa.Column("region", sa.String(64)))
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'rastau.db'}")
    try:
        await upgrade_to_head(engine)
        async with engine.connect() as conn:
            drift = await conn.run_sync(_schema_drift, widened, defaults=False)
    finally:
        await engine.dispose()
    assert [(op, column.table.name, column.name) for op, _schema, _table, column in drift] == [
        ("add_column", "clinics", "region")]


async def test_dropping_the_clinic_time_zone_keeps_every_row_that_refers_to_a_clinic(db_url):
    """0005 drops clinics.timezone in place: a table rebuild on SQLite would delete (ON DELETE CASCADE) the keys,
    changes and counters of every clinic, or fail on the doctors' and patients' RESTRICT."""
    import sqlalchemy as sa

    engine = create_engine(db_url)
    now = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)
    try:
        await upgrade_to_head(engine, "0004")
        async with engine.begin() as conn:
            await raw_rows.insert(conn, [
                *raw_rows.CLINIC_DOCTOR_PATIENT[:2],  # the clinic and its doctor
                "INSERT INTO api_keys (clinic_id, key_prefix, key_hash, scopes, created_at) "
                f"VALUES (1, '0123456789ab', '{'0' * 64}', 'admin', :t)"], now.replace(tzinfo=None))
        await upgrade_to_head(engine)
        async with engine.connect() as conn:
            columns = await conn.run_sync(lambda c: [col["name"] for col in sa.inspect(c).get_columns("clinics")])
            counts = [(await conn.execute(sa.text(f"SELECT count(*) FROM {table}"))).scalar_one()  # nosec B608
                      for table in ("clinics", "doctors", "api_keys")]
    finally:
        await engine.dispose()
    assert "timezone" not in columns
    assert counts == [1, 1, 1]


async def test_code_generation_is_filled_from_each_visits_code(db_url):
    """0014 copies each issued code's generation onto its visit: a code check compares the two, and reads the code
    again (a second round trip) wherever they differ."""
    import sqlalchemy as sa

    engine = create_engine(db_url)
    now = dt.datetime(2026, 11, 25, 4, 0, tzinfo=dt.UTC).replace(tzinfo=None)  # as a driver takes it
    try:
        await upgrade_to_head(engine, "0013")
        async with engine.begin() as conn:
            await raw_rows.insert(conn, [
                *raw_rows.CLINIC_DOCTOR_PATIENT,
                *(f"INSERT INTO visits (id, clinic_id, doctor_id, patient_id, start_at, duration_s, mode, "
                  f"service_code, state, created_at) VALUES ({i}, 1, 1, 1, :t, 1200, 'online', 'A01', "
                  f"'scheduled', :t)" for i in (1, 2)),
                "INSERT INTO visit_codes (visit_id, generation, code_hash, issued_at, expires_at) "
                "VALUES (1, 3, 'h', :t, :t)"], now)
        await upgrade_to_head(engine)
        async with engine.connect() as conn:
            generations = (await conn.execute(sa.text("SELECT id, code_generation FROM visits ORDER BY id"))).all()
    finally:
        await engine.dispose()
    assert [tuple(row) for row in generations] == [(1, 3), (2, None)]
