"""Worlds built once per test process: a fixture that fills the test's database through the services (clinics,
doctors, patients, keys, linked chats) builds it for the first two tests that ask, keeps the second build, and every
later test gets a copy of that database, row for row, and a copy of what the fixture returned (``built_once``). (A
key seen only once, say settings holding a stand-in's random port, so costs no copy.)

A world is a function of the settings (secrets included), the clock's start and the builder alone, and the copy is
the same data: the same rows, ids, sequences, random keys and audit chain the builder left. So the key is the
builder, the backend and every setting but the database's address, and the clock's reading; anything else (a
clock that is not a ManualClock, a keystore of its own, a database another fixture already wrote to, a schema
that is not the template's, a result that does not pickle) builds the world as before. The copy goes into the
test's own fresh database (its own SQLite file, its own PostgreSQL schema), so each test still starts from a clean
world of its own; only the building is shared. On SQLite the kept world is a file (SQLite's backup, also into the
test's file); on PostgreSQL a schema of plain tables holding the rows (CREATE TABLE AS: no indexes or keys, so no
catalog work to speak of), copied into the test's schema after it is emptied, and the sequences' values.

Building the server tests' two tenants cost ~60 ms of CPU a test, the web dashboard's world ~80 ms, the
clinic_world ~28 ms, on every one of ~700 tests; a copy costs a few milliseconds. ``RASTAU_TEST_BUILD_WORLDS=1``
builds every world in full, as before (to compare, or to rule the copies out).
"""
from __future__ import annotations

import os
import pickle
import sqlite3
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from sqlalchemy.engine import make_url

from core.clock import ManualClock
from core.db.engine import is_sqlite
from core.db.keystore import default_keystore_url

_SEARCH_PATH = "search_path"


@dataclass
class _Saved:
    result: bytes  # the builder's result, pickled: each test unpickles its own copy
    now: Any  # the clock after building
    sqlite: Path | None = None
    sqlite_keys: Path | None = None  # the keystore beside the SQLite file, when the builder made one
    pg_schema: str | None = None  # a schema holding a copy of each table that has rows (no keys, no indexes)
    pg_filled: tuple[str, ...] = ()  # those tables, parents first
    pg_sequences: tuple[tuple[str, int, bool], ...] = ()  # each sequence's last_value and is_called


class _Worlds:
    def __init__(self) -> None:
        self.saved: dict[tuple, _Saved] = {}
        self.seen: set[tuple] = set()  # keys built once: the second build is kept (a one-off key costs no copy)
        self.failed: set[tuple] = set()  # keys whose world could not be kept: built every time
        self.pg_schemas: list[str] = []
        self._workdir: tempfile.TemporaryDirectory | None = None

    def path(self, suffix: str) -> Path:
        if self._workdir is None:
            self._workdir = tempfile.TemporaryDirectory(prefix="rastau-worlds-")
        return Path(self._workdir.name) / f"{uuid.uuid4().hex}{suffix}"


_WORLDS = _Worlds()


def _key(build: Callable, ctx: Any, args: tuple) -> tuple | None:
    settings = ctx.settings
    if not isinstance(ctx.clock, ManualClock) or settings.keystore_url:
        return None
    url = make_url(settings.database_url)
    if is_sqlite(settings.database_url) and (not url.database or url.database == ":memory:"):
        return None
    values = [(name, value.get_secret_value() if isinstance(value, SecretStr) else value)
              for name, value in settings if name != "database_url"]
    return (build.__module__, build.__qualname__, url.get_backend_name(), repr(values), ctx.clock.now(), repr(args))


async def built_once[T](ctx: Any, build: Callable[..., Awaitable[T]], *args: object) -> T:
    """``await build(ctx, *args)``, or, when this process has built the same world before (same builder, a function
    of its module, and same ``args``, settings and clock), a copy of that database and of the result."""
    key = None if os.environ.get("RASTAU_TEST_BUILD_WORLDS") else _key(build, ctx, args)
    if key is None or key in _WORLDS.failed:
        return await build(ctx, *args)
    saved = _WORLDS.saved.get(key)
    if saved is not None and await _restore(saved, ctx.settings.database_url):
        ctx.clock.set(saved.now)
        return pickle.loads(saved.result)
    result = await build(ctx, *args)
    if saved is None and key not in _WORLDS.seen:
        _WORLDS.seen.add(key)
    elif saved is None:
        try:
            pickled = pickle.dumps(result)
        except (pickle.PicklingError, TypeError, AttributeError):  # what pickle raises for what it cannot copy
            pickled = None
        kept = None if pickled is None else await _save(ctx.settings.database_url, pickled, ctx.clock.now())
        if kept is None:
            _WORLDS.failed.add(key)
        else:
            _WORLDS.saved[key] = kept
    return result


# --- SQLite: files copied with SQLite's own backup (consistent while the test's engine holds connections) ----------

def _files(url: str) -> tuple[Path, Path]:
    return Path(make_url(url).database), Path(make_url(default_keystore_url(url)).database)


def _sqlite_copy(source: Path, target: Path) -> None:
    src = sqlite3.connect(source)
    try:
        dst = sqlite3.connect(target, timeout=30)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def _sqlite_pristine(database: Path, keys: Path) -> bool:
    """The test's file is still the template's copy (no row written to it, nothing in its WAL) and has no keystore."""
    from tests.conftest import _TEMPLATES

    template = _TEMPLATES.sqlite_path
    wal = database.with_name(database.name + "-wal")
    return (template is not None and not keys.exists() and (not wal.exists() or wal.stat().st_size == 0)
            and database.read_bytes() == template.read_bytes())


# --- PostgreSQL: rows copied between schemas of the template's shape ------------------------------------------------

def _schema(url: str) -> str | None:
    return make_url(url).query.get(_SEARCH_PATH)


def _restore_sql(saved: _Saved, target: str) -> str:
    """The test's schema emptied (children first), the world's rows copied in (parents first), its sequences set."""
    from tests.conftest import _SPARES

    return _SPARES.refill_sql(target, saved.pg_schema, saved.pg_filled, [
        f"SELECT setval('\"{target}\".\"{s}\"', {value}, {called})" for s, value, called in saved.pg_sequences])


def _counts_sql(schema: str) -> str:
    """Each table's row count and each sequence's state, as one text: a schema no test wrote to has the template's."""
    from tests.conftest import _SPARES

    parts = [f"SELECT '{t} ' || count(*) FROM \"{schema}\".\"{t}\"" for t in _SPARES.children_first]
    parts += [f"SELECT '{s} ' || last_value || ' ' || is_called FROM \"{schema}\".\"{s}\"" for s in _SPARES.sequences]
    return f"SELECT string_agg(item, ',' ORDER BY item) FROM ({' UNION ALL '.join(parts)}) AS counts(item)"


async def _pg_connect():
    import asyncpg

    from tests.conftest import PG_URL
    return await asyncpg.connect(PG_URL.replace("postgresql+asyncpg", "postgresql"))


async def _save(url: str, result: bytes, now: Any) -> _Saved | None:
    if is_sqlite(url):
        database, keys = _files(url)
        saved = _Saved(result, now, sqlite=_WORLDS.path(".db"))
        _sqlite_copy(database, saved.sqlite)
        if keys.exists():
            saved.sqlite_keys = _WORLDS.path(".keys.db")
            _sqlite_copy(keys, saved.sqlite_keys)
        return saved
    from tests.conftest import _CATALOG_FINGERPRINT, _SPARES, _TEMPLATES

    schema = _schema(url)
    if schema is None or _TEMPLATES.pg_template is None:
        return None
    snapshot = f"w_{uuid.uuid4().hex[:12]}"
    conn = await _pg_connect()
    try:
        await _SPARES.learn(conn)
        if not _SPARES.children_first or await conn.fetchval(_CATALOG_FINGERPRINT, schema) != _SPARES.fingerprint:
            return None  # the builder changed the schema itself
        parents_first = list(reversed(_SPARES.children_first))
        holding = {row[0] for row in await conn.fetch(" UNION ALL ".join(
            f"SELECT '{t}' WHERE EXISTS (SELECT FROM \"{schema}\".\"{t}\")" for t in parents_first))}
        filled = tuple(t for t in parents_first if t in holding)
        sequences = tuple([(s, *await conn.fetchrow(f'SELECT last_value, is_called FROM "{schema}"."{s}"'))
                           for s in _SPARES.sequences])
        async with conn.transaction():  # plain tables (CREATE TABLE AS): a store of rows, no catalog work to speak of
            await conn.execute(f'CREATE SCHEMA "{snapshot}"')
            _WORLDS.pg_schemas.append(snapshot)
            for t in filled:
                await conn.execute(f'CREATE TABLE "{snapshot}"."{t}" AS SELECT * FROM "{schema}"."{t}"')
    finally:
        await conn.close()
    return _Saved(result, now, pg_schema=snapshot, pg_filled=filled, pg_sequences=sequences)


async def _restore(saved: _Saved, url: str) -> bool:
    """The saved world into the test's database, if that is still the template's copy; False (nothing done) if not."""
    if saved.sqlite is not None:
        database, keys = _files(url)
        if not _sqlite_pristine(database, keys):
            return False
        _sqlite_copy(saved.sqlite, database)
        if saved.sqlite_keys is not None:
            _sqlite_copy(saved.sqlite_keys, keys)
        return True
    import asyncpg

    from tests.conftest import _SPARES

    schema = _schema(url)
    if schema is None or saved.pg_schema is None:
        return False
    conn = await _pg_connect()
    try:
        if _SPARES.template_counts is None:
            from tests.conftest import _TEMPLATES
            _SPARES.template_counts = await conn.fetchval(_counts_sql(_TEMPLATES.pg_template))
        if await conn.fetchval(_counts_sql(schema)) != _SPARES.template_counts:
            return False
        async with conn.transaction():
            await conn.execute("SET LOCAL lock_timeout = '2s'")
            await conn.execute(_restore_sql(saved, schema))
        return True
    except asyncpg.PostgresError:
        return False
    finally:
        await conn.close()


def pg_schemas() -> list[str]:
    return _WORLDS.pg_schemas


async def drop_all() -> None:
    """The snapshot schemas go with the process that made them (the SQLite copies go with its temporary directory)."""
    from tests.conftest import _pg_execute

    for schema in _WORLDS.pg_schemas:
        await _pg_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    _WORLDS.pg_schemas.clear()
