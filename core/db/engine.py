"""Engines for the two supported databases.

SQLite (embedded default): WAL, synchronous=FULL, a busy timeout, foreign keys on, and every transaction
opened with BEGIN IMMEDIATE so concurrent writers queue instead of failing on lock upgrade; through aiosqlite with
one trip to its thread per statement (core.db.sqlite_driver).
PostgreSQL (asyncpg): READ COMMITTED plus explicit row locks where counters must be exact; a pooled connection idle
for IDLE_PING_AFTER_S is pinged before use (one that was just used is not: a ping is three round trips).
Neither echoes SQL, and errors never carry bound parameters (names, phones, stored responses).
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection, ExecutionContext
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, PoolResetState

from core.db.repositories import SQLITE_SHA256
from core.db.sqlite_driver import POINT_WRITE, OneTripConnection, one_trip_connector

SQLITE_BUSY_TIMEOUT_MS = 30_000
READ_ONLY_OPTION = "rastau_read_only"  # a connection option: begin a deferred (read) transaction on SQLite
# a connection option: begin no transaction at all on SQLite (each statement reads one snapshot of its own, as
# PostgreSQL's autocommit reads do): for a unit that reads in one statement, saving the BEGIN's trip to the thread
STATEMENT_READS_OPTION = "rastau_statement_reads"
# SQLite keeps this many connections open (each with aiosqlite's thread): a request in flight takes one to read its
# key and the writers share one, so at 16 requests in flight SQLAlchemy's default (5, and 10 more opened and closed
# again, each a thread started and a file opened) made and closed connections on most requests
SQLITE_POOL_SIZE = 24
IDLE_PING_AFTER_S = 2.0
_CHECKED_IN_AT = "rastau_checked_in_at"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        timeout = SQLITE_BUSY_TIMEOUT_MS / 1000
        # The pool's rollback of a connection it takes back only when a transaction is still open (_tune_sqlite):
        # on SQLite each rollback is one more trip to aiosqlite's thread, and most connections come back ended.
        if parsed.database and parsed.database != ":memory:" and not parsed.query:  # one thread trip a statement
            engine = create_async_engine(url, hide_parameters=True, pool_reset_on_return=None,
                                         pool_size=SQLITE_POOL_SIZE, max_overflow=SQLITE_POOL_SIZE,
                                         async_creator=one_trip_connector(parsed.database, timeout=timeout))
        else:
            engine = create_async_engine(url, hide_parameters=True, pool_reset_on_return=None,
                                         connect_args={"timeout": timeout})
        _tune_sqlite(engine)
        return engine
    connect_args = {}
    if "search_path" in parsed.query:  # e.g. ...?search_path=rastau: one schema per deployment (or per test)
        connect_args["server_settings"] = {"search_path": parsed.query["search_path"]}
        parsed = parsed.difference_update_query(["search_path"])
    engine = create_async_engine(parsed, hide_parameters=True, pool_size=10, max_overflow=20,
                                 connect_args=connect_args)
    _ping_idle_connections(engine)
    return engine


def _ping_idle_connections(engine: AsyncEngine) -> None:
    """SQLAlchemy's pool_pre_ping, but only for connections idle longer than IDLE_PING_AFTER_S: a database that
    restarted while the server was quiet costs no request; one that restarts under load fails the requests then in
    flight (503), and the pool, seeing the disconnect, replaces every connection."""

    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        record.info[_CHECKED_IN_AT] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection) -> None:
        if time.monotonic() - record.info.get(_CHECKED_IN_AT, 0.0) < IDLE_PING_AFTER_S:
            return
        try:
            dbapi_connection.ping()
        except Exception as exc:  # the pool reconnects and tries again
            raise DisconnectionError(type(exc).__name__) from exc


def _sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


_SAVEPOINT_STATEMENTS = ("SAVEPOINT ", "RELEASE SAVEPOINT ", "ROLLBACK TO SAVEPOINT ")


def _tune_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL, not NORMAL: under WAL, NORMAL survives a crashed process but a power loss takes back commits already
        # answered (a dispute acknowledged, an attempt counted, audit rows); group commit (core.db.uow) saves the
        # fsyncs instead, with no loss (bench/RESULTS.md, code verification)
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
        # the audit chain's hash, so a row is hashed and appended in one statement (repositories.AuditRepo)
        dbapi_connection.create_function(SQLITE_SHA256, 1, _sha256_hex, deterministic=True)

    @event.listens_for(engine.sync_engine, "reset")
    def _on_reset(dbapi_connection: Any, _record: ConnectionPoolEntry, _state: PoolResetState) -> None:
        if dbapi_connection.driver_connection.in_transaction:  # read without a trip to the thread
            dbapi_connection.rollback()

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _before_statement(conn: Connection, _cursor: Any, statement: str, _parameters: Any,
                          context: ExecutionContext | None, _executemany: bool) -> None:
        """Tell the one-trip driver whether this statement may run on the loop's thread (sqlite_driver.POINT_WRITE):
        a marked statement, or a savepoint's (the group commit's writers each run in one)."""
        driver = conn.connection.driver_connection
        if isinstance(driver, OneTripConnection):
            driver.point_next = statement.startswith(_SAVEPOINT_STATEMENTS) or (
                context is not None and bool(context.execution_options.get(POINT_WRITE)))

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get(STATEMENT_READS_OPTION):  # sqlite3 in autocommit: each statement its own read transaction
            return
        conn.exec_driver_sql("BEGIN" if options.get(READ_ONLY_OPTION) else "BEGIN IMMEDIATE")
