"""aiosqlite with one trip to its thread per statement instead of four.

aiosqlite runs every sqlite3 call in a thread of its own, and SQLAlchemy's adapter makes four calls per statement
(open a cursor, execute, fetch the rows, close the cursor): four hand-offs to the thread and back, each a queue
put, a thread wake-up, a future resolved through the event loop and a greenlet switch. SQLite answers a point
query in microseconds, so the hand-offs were most of a statement's cost on the server's CPU. Here a cursor does
all four in one hand-off and keeps the rows; fetching them and closing cost no trip. Every result is therefore
read whole when its statement runs (SQLite's results here are a few rows; nothing streams from SQLite).

Built on aiosqlite's Connection, whose worker thread, transaction handling and close are kept as they are; the
one method it adds work through is ``Connection._execute`` (queue a function for the thread), which aiosqlite's
own cursors use.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import aiosqlite

_Outcome = tuple[Any, int, int | None, list[Any]]  # description, rowcount, lastrowid, rows
# A statement's execution option: it reads and writes a few rows found by key (the code check's statements). While
# its connection holds SQLite's write lock, such a statement runs on the event loop's own thread: under the lock it
# waits for no other connection, and SQLite does it in microseconds, where the hand-off to aiosqlite's thread and
# back (a queue, a thread woken, a future resolved through the loop's self-pipe) cost the server more CPU than the
# statement itself. Everything else goes to the thread as before: BEGIN IMMEDIATE (which may wait for another
# process's writer), COMMIT (which waits for the fsync), reads, and statements not marked.
POINT_WRITE = "rastau_point_write"
_WRITE_LOCK_TAKEN = "BEGIN IMMEDIATE"


def _run(db: sqlite3.Connection, sql: str, parameters: Any, many: bool) -> _Outcome:
    """In aiosqlite's thread: the statement, its rows and its counts, the cursor closed."""
    cursor = db.cursor()
    try:
        if many:
            cursor.executemany(sql, parameters)
        else:
            cursor.execute(sql, parameters)
        rows = cursor.fetchall() if cursor.description else []
        return cursor.description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


class OneTripCursor:
    """What SQLAlchemy's adapter needs of an aiosqlite cursor, with the rows read at execute time."""

    arraysize = 1

    def __init__(self, connection: OneTripConnection):
        self._connection = connection
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._rows: list[Any] = []

    async def __aenter__(self) -> OneTripCursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        return None

    async def execute(self, sql: str, parameters: Any = ()) -> OneTripCursor:
        return await self._run(sql, parameters, many=False)

    async def executemany(self, sql: str, parameters: Sequence[Any]) -> OneTripCursor:
        return await self._run(sql, parameters, many=True)

    async def _run(self, sql: str, parameters: Any, *, many: bool) -> OneTripCursor:
        connection = self._connection
        if connection.may_run_here():
            outcome = _run(connection._conn, sql, parameters, many)  # see POINT_WRITE
        else:
            outcome = await connection.in_thread(_run, sql, parameters, many)
            if sql == _WRITE_LOCK_TAKEN:
                connection.write_lock_taken = True
        self.description, self.rowcount, self.lastrowid, self._rows = outcome
        return self

    async def fetchall(self) -> list[Any]:
        rows, self._rows = self._rows, []
        return rows

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        size = size or self.arraysize
        rows, self._rows = self._rows[:size], self._rows[size:]
        return rows

    async def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    async def close(self) -> None:
        self._rows = []


class OneTripConnection(aiosqlite.Connection):
    point_next = False  # the next statement is a POINT_WRITE (set for every statement by core.db.engine)
    write_lock_taken = False  # the open transaction began with BEGIN IMMEDIATE here

    def cursor(self) -> OneTripCursor:  # type: ignore[override]  # no trip to the thread: made at its first statement
        return OneTripCursor(self)

    def may_run_here(self) -> bool:
        """Called before every statement: whether it may run on the loop's thread, being a POINT_WRITE inside a
        transaction this connection opened with BEGIN IMMEDIATE (so it holds SQLite's write lock). Every transaction
        begins with a statement run while none is open, which forgets the last one's BEGIN IMMEDIATE here; the flag
        is read without a trip to the thread, as ``rollback`` reads it."""
        if not self._conn.in_transaction:
            self.write_lock_taken = False
            return False
        return self.point_next and self.write_lock_taken

    async def rollback(self) -> None:
        """Roll back, with no trip to the thread when no transaction is open (a unit that read without BEGIN, or
        whose transaction already ended). Reading the flag from here is safe: this connection's calls are awaited
        one after another, so nothing runs on its thread meanwhile."""
        if self._conn.in_transaction:
            await super().rollback()

    async def in_thread(self, fn: Callable[..., _Outcome], *args: Any) -> _Outcome:
        """``fn(the sqlite3 connection, *args)`` in the connection's thread, one hand-off."""
        outcome: _Outcome = await self._execute(lambda: fn(self._conn, *args))  # type: ignore[no-untyped-call]
        return outcome


def one_trip_connector(database: str, **connect_args: Any) -> Callable[[], Any]:
    """An ``async_creator`` for SQLAlchemy: a started OneTripConnection to ``database``."""

    async def connect() -> OneTripConnection:
        connection = OneTripConnection(lambda: sqlite3.connect(database, check_same_thread=False, **connect_args),
                                       64)
        connection._thread.daemon = True  # as SQLAlchemy does for aiosqlite: a forgotten one never blocks exit
        await connection
        return connection

    return connect
