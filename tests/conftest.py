"""Shared fixtures: a migrated database on SQLite (a real file) and on the real PostgreSQL, a manual clock,
and a services Context with test secrets.

Alembic runs once per backend and test process, on a template; each test's database is a copy of that template
(see ``migrate_from_template``), or on PostgreSQL an earlier test's schema emptied back to it (``_SpareSchemas``).
Every pytest-xdist worker is a process of its own, so each has its own templates, files (tmp_path) and schemas
(random names)."""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from core.clock import ManualClock
from core.config import Mode, Settings
from core.db.engine import create_engine, is_sqlite
from core.db.migrate import upgrade_to_head
from core.db.uow import UnitOfWorkFactory
from core.logs import configure_logging
from core.model import Clinic, ClinicAdmin, Doctor, Patient
from core.services import Context, registry
from tests.worlds import built_once

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


_PG_PROBLEM: str | bool | None = False


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


class _SettingsWithoutDotenv(Settings):
    """The product's Settings from the arguments and RASTAU_ variables only. With no .env file read, pydantic-settings'
    dotenv source still walks every field against the environment a second time: half of the ~10 ms each test's
    Settings cost."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return init_settings, env_settings, file_secret_settings


_SECRETS = {name: secrets.token_urlsafe(32) for name in ("code_hmac_key", "template_key", "api_key_pepper")}


def test_settings(database_url: str, **overrides) -> Settings:
    """Dev-mode settings on ``database_url``, with this process's random secrets (one set per process, so that a world
    a fixture built once can be copied for the next test: tests/worlds.py)."""
    values = dict(mode=Mode.DEV, database_url=database_url, **_SECRETS,
                  single_frame_face=True)  # the single-frame route's tests; capture tests turn it off
    values.update(overrides)
    return _SettingsWithoutDotenv(_env_file=None, **values)


async def _pg_execute(sql: str, url: str = PG_URL) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def pg_schema():
    """A fresh schema in the PostgreSQL test database, dropped afterwards (skips, or fails under CI, when
    PostgreSQL is down). One that ``migrate_from_template`` filled is kept for the next test instead (see
    ``_SpareSchemas``)."""
    pg_or_skip()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_execute(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?search_path={schema}"
    finally:
        if not _SPARES.keep(schema):
            asyncio.run(_pg_execute(f'DROP SCHEMA "{schema}" CASCADE'))


class _Templates:
    """Per process: one SQLite file and one PostgreSQL schema brought to head by Alembic, made on first use."""

    def __init__(self) -> None:
        self._sqlite: Path | None = None
        self._pg_script: str | None = None
        self.pg_template: str | None = None
        self._workdir = tempfile.TemporaryDirectory(prefix="rastau-templates-")

    @property
    def sqlite_path(self) -> Path | None:
        return self._sqlite

    async def sqlite_file(self) -> Path:
        if self._sqlite is None:
            path = Path(self._workdir.name) / "template.db"
            engine = create_engine(f"sqlite+aiosqlite:///{path}")
            try:
                await upgrade_to_head(engine)
            finally:
                await engine.dispose()  # the last connection to close checkpoints the WAL into the file
            self._sqlite = path
        return self._sqlite

    async def pg_script(self) -> str:
        """The migrated template schema as SQL (pg_dump: tables, sequences, indexes, seed rows), its schema
        name replaced by a placeholder. The template schema itself stays, as the seed rows' source when a
        spare schema is emptied (``_SpareSchemas``); ``pytest_sessionfinish`` drops it."""
        if self._pg_script is None:
            template = f"rastau_template_{uuid.uuid4().hex}"
            await _pg_execute(f'CREATE SCHEMA "{template}"')
            try:
                engine = create_engine(f"{PG_URL}?search_path={template}")
                try:
                    await upgrade_to_head(engine)
                finally:
                    await engine.dispose()
                dump = _pg_dump_schema(template)
            except BaseException:
                await _pg_execute(f'DROP SCHEMA "{template}" CASCADE')
                raise
            self.pg_template = template
            lines = [line for line in dump.splitlines()
                     if not line.startswith("\\") and not line.startswith(f"CREATE SCHEMA {template};")]
            self._pg_script = "\n".join(lines).replace(template, "{schema}")
        return self._pg_script


def _pg_dump_schema(schema: str) -> str:
    url = make_url(PG_URL)
    env = dict(os.environ, PGPASSWORD=url.password or "")
    return subprocess.run(
        ["pg_dump", "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "postgres",
         "-d", url.database, "-n", schema, "--no-owner", "--no-privileges", "--inserts"],
        env=env, capture_output=True, text=True, check=True).stdout


_TEMPLATES = _Templates()
_SEARCH_PATH = re.compile(r"[?&]search_path=([A-Za-z0-9_]+)")


async def migrate_from_template(url: str) -> None:
    """Bring an empty test database to head, as ``upgrade_to_head`` would, by copying the process's template:
    a file copy on SQLite, the template's dump replayed into the test's schema on PostgreSQL. The migration
    tests run Alembic itself; everything else gets the same schema in milliseconds instead of half a second."""
    if is_sqlite(url):
        shutil.copyfile(await _TEMPLATES.sqlite_file(), make_url(url).database)
        return
    schema = _SEARCH_PATH.search(url)
    if schema is None or shutil.which("pg_dump") is None:  # no schema of its own to fill, or no pg_dump here
        engine = create_engine(url)
        try:
            await upgrade_to_head(engine)
        finally:
            await engine.dispose()
        return
    script = await _TEMPLATES.pg_script()
    if not await _SPARES.fill(schema.group(1)):
        await _pg_execute(script.replace("{schema}", schema.group(1)))
        _SPARES.filled.add(schema.group(1))


_CATALOG_FINGERPRINT = """
SELECT md5(string_agg(item, ',' ORDER BY item)) FROM (
    SELECT format('rel %s %s', relname, relkind) FROM pg_class WHERE relnamespace = $1::regnamespace
    UNION ALL
    SELECT format('col %s %s %s %s %s', c.relname, a.attname, a.atttypid, a.atttypmod, a.attnotnull)
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    WHERE c.relnamespace = $1::regnamespace AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT format('con %s %s %s %s', conname, contype, conkey, confkey) FROM pg_constraint
    WHERE connamespace = $1::regnamespace
) AS catalog(item)
"""


class _SpareSchemas:
    """Per process: PostgreSQL schemas that a finished test's database lived in, reused by the next test.

    Replaying the template's dump costs the server ~0.7 s of catalog work and dropping a schema ~0.25 s, on every
    PostgreSQL test. A spare whose relations, columns and constraints are still the template's (the same catalog
    fingerprint: a test that ran Alembic or DDL on its database changed it) is emptied instead: each table's rows
    deleted (children first), the template's seed rows copied back, every sequence set as the template's; it is
    renamed to the new test's schema, so it starts as a freshly migrated database under its own name. Anything
    unexpected (a lock still held, another fingerprint) drops the spare and the test gets the replay."""

    def __init__(self) -> None:
        self.filled: set[str] = set()  # schemas migrate_from_template filled, to be kept when their test ends
        self._spares: list[str] = []
        self._seeded: list[str] | None = None  # the template's tables with rows in them (None: not learnt yet)
        self.fingerprint: str | None = None  # the template's catalog (_CATALOG_FINGERPRINT)
        self.children_first: list[str] = []  # the template's tables, children before the tables they refer to
        self.sequences: list[str] = []
        self.template_counts: str | None = None  # the template's rows and sequences (tests/worlds.py)

    def keep(self, schema: str) -> bool:
        if schema not in self.filled:
            return False
        self.filled.discard(schema)
        self._spares.append(schema)
        return True

    async def fill(self, schema: str) -> bool:
        """Make ``schema`` (just created, empty) a migrated database from a spare; False when there is none."""
        import asyncpg

        if not self._spares or _TEMPLATES.pg_template is None:
            return False
        conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg", "postgresql"))
        try:
            await self.learn(conn)
            while self._spares:
                spare = self._spares.pop()
                try:
                    if self.children_first and await conn.fetchval(_CATALOG_FINGERPRINT, spare) == self.fingerprint:
                        async with conn.transaction():
                            await conn.execute("SET LOCAL lock_timeout = '2s'")
                            await conn.execute(f'DROP SCHEMA "{schema}"; ALTER SCHEMA "{spare}" RENAME TO "{schema}"')
                            await conn.execute(self._as_template_sql(schema))
                        self.filled.add(schema)
                        return True
                except asyncpg.PostgresError:
                    pass
                await conn.execute(f'DROP SCHEMA IF EXISTS "{spare}" CASCADE')
            return False
        finally:
            await conn.close()

    async def learn(self, conn) -> None:
        """The template's tables (children first), seeded tables and sequences, from its catalog (once); no tables (no
        reuse) if foreign keys form a cycle."""
        if self._seeded is not None or _TEMPLATES.pg_template is None:
            return
        template = _TEMPLATES.pg_template
        self.fingerprint = await conn.fetchval(_CATALOG_FINGERPRINT, template)
        tables = {row["relname"] for row in await conn.fetch(
            "SELECT relname FROM pg_class WHERE relnamespace = $1::regnamespace AND relkind IN ('r', 'p')", template)}
        parents = {table: set() for table in tables}
        for row in await conn.fetch(
                "SELECT c.relname AS child, p.relname AS parent FROM pg_constraint con "
                "JOIN pg_class c ON c.oid = con.conrelid JOIN pg_class p ON p.oid = con.confrelid "
                "WHERE con.contype = 'f' AND con.connamespace = $1::regnamespace", template):
            if row["child"] != row["parent"]:
                parents[row["child"]].add(row["parent"])
        children_first: list[str] = []
        while parents:
            leaves = sorted(t for t in parents if not any(t in ps for ps in parents.values()))
            if not leaves:
                self._seeded = []
                return
            children_first += leaves
            for leaf in leaves:
                del parents[leaf]
        self.children_first = children_first
        self._seeded = [t for t in sorted(tables)
                        if await conn.fetchval(f'SELECT EXISTS (SELECT FROM "{template}"."{t}")')]
        self.sequences = [row["relname"] for row in await conn.fetch(
            "SELECT relname FROM pg_class WHERE relnamespace = $1::regnamespace AND relkind = 'S'", template)]

    def refill_sql(self, target: str, source: str, tables: Iterable[str], setvals: list[str]) -> str:
        """``target`` (a schema of the template's shape) emptied, children first, then ``tables``' rows copied in from
        ``source`` and the sequences set by ``setvals``: how a spare becomes the template again, and how a test's
        schema gets a saved world (tests/worlds.py)."""
        statements = [f'DELETE FROM "{target}"."{t}"' for t in self.children_first]
        statements += [f'INSERT INTO "{target}"."{t}" SELECT * FROM "{source}"."{t}"' for t in tables]
        return ";\n".join([*statements, *setvals])

    def _as_template_sql(self, schema: str) -> str:
        template = _TEMPLATES.pg_template
        assert template is not None and self._seeded is not None, "learnt from the template"
        return self.refill_sql(schema, template, self._seeded, [
            f"SELECT setval('\"{schema}\".\"{s}\"', last_value, is_called) FROM \"{template}\".\"{s}\""
            for s in self.sequences])

    async def drop_all(self) -> None:
        for schema in [*self._spares, *([_TEMPLATES.pg_template] if _TEMPLATES.pg_template else [])]:
            await _pg_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        self._spares.clear()


_SPARES = _SpareSchemas()


def pytest_sessionfinish(session):
    """The spare schemas, the worlds' and the template go with the process that made them."""
    from tests import worlds

    if worlds.pg_schemas():
        asyncio.run(worlds.drop_all())
    if _SPARES._spares or _TEMPLATES.pg_template:
        asyncio.run(_SPARES.drop_all())


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the moment (pytest swaps it per test for capsys)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def log_as_the_product() -> None:
    """Logs through the product's pipeline (core.logs: redacted, plain tracebacks), as the server and the bot
    configure it at start, to the current ``sys.stderr``."""
    configure_logging("INFO", "console", stream=_CurrentStderr())


@pytest.fixture(scope="session", autouse=True)
def product_logging():
    """Every test logs as the product does. structlog's unconfigured default renders each logged exception with
    rich, every frame's locals included: one apology for a failed update took 20 s of CPU that way."""
    log_as_the_product()


def _commit_without_waiting_for_the_disk(dialect, _conn_rec, _cargs, cparams) -> None:
    if dialect.driver == "asyncpg":
        cparams["server_settings"] = {**cparams.get("server_settings", {}), "synchronous_commit": "off"}


@pytest.fixture(scope="session", autouse=True)
def postgres_commits_without_fsync():
    """Every PostgreSQL connection a test opens commits without waiting for its WAL to reach the disk
    (synchronous_commit=off, in the connection's start-up settings): on this disk each wait cost ~5 ms, and a test
    commits dozens of times. What a test can observe is the same: a commit is visible to every other connection
    at once, locks and order are unchanged; only a crash of the PostgreSQL server itself, which no test causes,
    could lose the last commits. Servers the tests start as processes connect as the product does."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    event.listen(Engine, "do_connect", _commit_without_waiting_for_the_disk)
    yield
    event.remove(Engine, "do_connect", _commit_without_waiting_for_the_disk)


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
    await migrate_from_template(db_url)
    eng = create_engine(db_url)
    yield eng
    await eng.dispose()


@pytest.fixture(scope="module")
def started_pool():
    """One real face worker for a module (the demo's stories, the enrolment runs): each test would otherwise
    spawn its own and load dlib's models."""
    from server.face.pool import FacePool  # only the modules that ask for a face worker pay its imports

    pool = FacePool(1)
    asyncio.run(pool.start())
    yield pool
    asyncio.run(pool.close())


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


@dataclass
class ClinicWorld:
    clinic: Clinic
    doctor: Doctor
    admin: ClinicAdmin
    p1: Patient
    p2: Patient


async def _clinic_world(ctx) -> ClinicWorld:
    clinic = await registry.create_clinic(ctx, "Emhana No. 5")
    doctor = await registry.add_doctor(ctx, clinic.id, "Aidos Seitkali", "8 (701) 111-22-33")
    admin = await registry.add_admin(ctx, clinic.id, "Gulnara Admin", "+7 702 555 44 33")
    p1 = (await registry.upsert_patient(ctx, clinic.id, VALID_IINS[0], "Asel N.", "87011234567", "kk")).patient
    p2 = (await registry.upsert_patient(ctx, clinic.id, VALID_IINS[1], "Ivan P.", "+7 705 765 43 21", "ru")).patient
    return ClinicWorld(clinic, doctor, admin, p1, p2)


@pytest.fixture
async def clinic_world(ctx) -> ClinicWorld:
    """One clinic with a doctor, an admin and two patients (built once per process: tests/worlds.py)."""
    return await built_once(ctx, _clinic_world)


async def patient_change_rows(ctx, patient_id: int) -> list:
    """The `patient_changes` rows of one patient, oldest first (what the tests of "the patient hears of every
    change" inspect: kind, actor, disputed_at)."""
    from sqlalchemy import select

    from core.db import tables as t
    async with ctx.uow(read_only=True) as uow:
        return list((await uow.conn.execute(select(t.patient_changes).where(
            t.patient_changes.c.patient_id == patient_id).order_by(t.patient_changes.c.id))).all())


def pytest_collection_finish(session):
    """Everything imported and collected so far lives until the process ends: frozen out of the garbage
    collector's reach, a full collection no longer walks it (0.8 s → 0.4 s a pass in a bot test's process, a
    pause long enough to time out a stand-in's answer)."""
    gc.collect()
    gc.freeze()


def pytest_collection_modifyitems(items):
    """Longest first: tests with a timeout of their own (the harnesses), then the other slow ones, then the rest,
    each group in file order. With several workers the harnesses start at once instead of starting last and
    running alone.

    pytest-xdist's work stealing first hands each of its K workers one contiguous K-th of this order, and an idle
    worker steals only from the end of another's queue: sorted as it is, the first worker would get every slow
    test (both crash harnesses one after the other). So the order is dealt out like cards into K hands, each hand
    longest first, and the hands laid end to end: every worker starts on its share of the slow tests. The tests of
    a module that share one of its module-scoped fixtures (a fuzzed server process, a face worker pool) are one
    card: dealt one by one, each worker that got one of them started the fixture again (the fuzz's server and its
    seeding four times, ~4-6 s each)."""
    def allowed_seconds(item) -> float:
        timeout = item.get_closest_marker("timeout")
        if timeout is not None:
            return float(timeout.args[0] if timeout.args else timeout.kwargs.get("timeout", 0))
        return 1.0 if item.get_closest_marker("slow") else 0.0

    items.sort(key=allowed_seconds, reverse=True)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        items[:] = _deal(items, workers)


def _module_fixture(item) -> str | None:
    """The module-scoped fixture of this project's (tests/) that the test uses, if any."""
    info = getattr(item, "_fixtureinfo", None)
    for name in item.fixturenames if info is not None else ():
        for fixturedef in info.name2fixturedefs.get(name, ()):
            if fixturedef.scope == "module" and getattr(fixturedef.func, "__module__", "").startswith("tests."):
                return name
    return None


def _deal(items: list, workers: int) -> list:
    """The cards (a test, or a module's tests sharing a module fixture) in order, each to the hand holding the fewest
    tests so far; then each hand is brought to the size of the share xdist's work stealing first sends its worker
    (``len(pending) // workers_left``, in worker order) by moving single tests from the ends of hands (the
    quickest) to hands that are short, so that every hand starts exactly where its worker's share does."""
    cards: list[list] = []
    shared: dict[tuple, list] = {}
    for item in items:
        fixture = _module_fixture(item)
        if fixture is None:
            cards.append([item])
        elif (key := (item.path, fixture)) in shared:
            shared[key].append(item)
        else:
            cards.append(shared.setdefault(key, [item]))
    hands: list[list[list]] = [[] for _ in range(workers)]
    held = [0] * workers
    for card in cards:
        fewest = held.index(min(held))
        hands[fewest].append(card)
        held[fewest] += len(card)
    sizes, left = [], len(items)
    for n in range(workers):
        sizes.append(left // (workers - n))
        left -= sizes[-1]
    spare: list[list] = []
    for n, hand in enumerate(hands):
        while held[n] > sizes[n] and len(hand[-1]) == 1:
            spare.append(hand.pop())
            held[n] -= 1
    for n, hand in enumerate(hands):
        while held[n] < sizes[n] and spare:
            hand.append(spare.pop())
            held[n] += 1
    hands[-1].extend(spare)  # none is left (the hands' sizes add up to the tests'), but none is ever lost
    return [item for hand in hands for card in hand for item in card]
