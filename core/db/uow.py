"""Unit of work: one transaction, all repositories on its connection, commit or roll back as a whole.

State changes and the outbox messages they cause are written through the same unit of work, so either
both land or neither does.

The driver's errors do not leave it: a refused unique or foreign key becomes :class:`core.errors.ConcurrentWrite`,
a database that cannot answer :class:`core.errors.DatabaseUnavailable` (the driver's error is the cause), so the
server and the bot need not know SQLAlchemy.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import Any, cast

from sqlalchemy import Dialect, text
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core.db.channels import ChannelRepo  # issue 14: patient channels, SMS budget, inbound dedupe
from core.db.engine import READ_ONLY_OPTION, STATEMENT_READS_OPTION
from core.db.queries import FlagQueries, Queries
from core.db.record import RecordQueries, RetentionRepo  # the patient's record and retention (issue 16)
from core.db.repositories import (
    AdminRepo,
    ApiKeyRepo,
    AuditorRepo,
    AuditRepo,
    CaptureSessionRepo,
    ChatUserRepo,
    ClinicRepo,
    CodeRepo,
    DeathListRepo,
    DoctorRepo,
    FaceFailureRepo,
    IdempotencyRepo,
    OutboxRepo,
    PatientChangeRepo,
    PatientRepo,
    ProcessedUpdateRepo,
    ServiceRuleRepo,
    TemplateRepo,
    VisitRepo,
)
from core.errors import ConcurrentWrite, DatabaseUnavailable


def _unavailable(exc: BaseException) -> bool:
    """Connection-level failures (server down, refused, timed out, SQLite locked), not bugs in a query."""
    if isinstance(exc, (OperationalError, InterfaceError, OSError)):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _translated(exc: BaseException) -> Exception | None:
    """The core error that stands for a driver's error, or None for any other exception."""
    if isinstance(exc, IntegrityError):
        return ConcurrentWrite("another request changed the same record at the same moment; retry this request")
    if _unavailable(exc):
        return DatabaseUnavailable(f"the database is unreachable ({type(exc).__name__})")
    return None


class _WriterSavepoint:
    """A grouped writer's savepoint, as plain statements: SQLAlchemy's own (begin_nested) compiles its SAVEPOINT and
    RELEASE anew for every writer. Writers of a group take their turns one after another, so one name serves."""

    NAME = "rastau_writer"

    def __init__(self, conn: AsyncConnection):
        self._conn = conn

    async def begin(self) -> _WriterSavepoint:
        await self._conn.exec_driver_sql(f"SAVEPOINT {self.NAME}")
        return self

    async def commit(self) -> None:
        await self._conn.exec_driver_sql(f"RELEASE SAVEPOINT {self.NAME}")

    async def rollback(self) -> None:
        await self._conn.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {self.NAME}")
        await self._conn.exec_driver_sql(f"RELEASE SAVEPOINT {self.NAME}")


class SqliteWriters:
    """Group commit for SQLite: the writers of this process that queue while one writes share its transaction.

    SQLite admits one writer at a time, and each commit waits for an fsync (synchronous=FULL), which on this
    class of disk costs as much as the writer's own work. So writers queue on an asyncio lock (a FIFO beats
    SQLite's busy handler, which sleeps up to 100 ms per retry), and the first of a burst opens the transaction
    (BEGIN IMMEDIATE); each one after it runs in a savepoint of that transaction, so a writer that fails or
    leaves without committing takes back only its own statements. A writer's commit releases its savepoint, and
    while more writers wait (up to MAX_GROUP) it hands the lock on and waits for the one COMMIT that makes the
    whole group durable: nobody is told "committed" before the fsync, and if the COMMIT fails, every writer of
    the group is told so. Nothing is weakened: each writer still sees the writes before it and is atomic alone.
    Other processes (the bot beside the server) still meet the busy timeout.
    """

    MAX_GROUP = 32

    def __init__(self, engine: AsyncEngine):
        self._engine = engine
        self._lock = asyncio.Lock()
        self._waiting = 0  # writers queued on the lock
        self._conn: AsyncConnection | None = None  # the group's open transaction
        self._released: list[asyncio.Future[None]] = []  # writers done in it, waiting for its COMMIT
        self._orphan_commits: set[asyncio.Future[None]] = set()  # held so they are not collected mid-commit

    async def enter(self) -> tuple[AsyncConnection, _WriterSavepoint | None]:
        """Wait for the turn to write; the connection and the writer's savepoint (None for the group's first)."""
        self._waiting += 1
        try:
            await self._lock.acquire()
        except BaseException:
            self._waiting -= 1
            if self._released and self._waiting == 0 and not self._lock.locked():
                # the writer before counted on this one to commit its group, and this one gave up waiting
                task = asyncio.ensure_future(self._commit_orphaned())
                self._orphan_commits.add(task)
                task.add_done_callback(self._orphan_commits.discard)
            raise
        self._waiting -= 1
        try:
            if self._conn is None:
                conn = await self._engine.connect()
                try:
                    await conn.begin()
                except BaseException:
                    await conn.close()
                    raise
                self._conn = conn
                return conn, None
            return self._conn, await _WriterSavepoint(self._conn).begin()
        except BaseException as exc:
            await self._end_group(exc)
            raise

    async def leave(self, savepoint: _WriterSavepoint | None, *, commit: bool) -> None:
        """End a writer's turn (it holds the lock): keep or take back its statements; when it is the last of the
        group, COMMIT for all. Returns once the writer's statements are durable (commit) or gone."""
        assert self._conn is not None, "a writer leaves the group it entered"
        try:
            if savepoint is not None:
                await (savepoint.commit() if commit else savepoint.rollback())
            elif not commit:  # the group's first writer, alone in the transaction: nothing else to keep
                await self._end_group(None)
                return
        except BaseException as exc:  # the transaction itself is broken: nothing of the group can be kept
            await self._end_group(exc)
            raise
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if commit:
            self._released.append(done)
        if self._waiting and len(self._released) < self.MAX_GROUP:
            self._lock.release()
            if commit:
                await asyncio.shield(done)
            return
        if not self._released:
            await self._end_group(None)
            return
        # shielded: a cancelled request must not leave the group's COMMIT half-awaited
        await asyncio.shield(self._commit_group())
        if commit:
            await done  # raises, as for every writer of the group, when the COMMIT failed

    async def _commit_orphaned(self) -> None:
        async with self._lock:
            if self._released and self._conn is not None:
                await self._commit_group(release=False)

    async def _commit_group(self, *, release: bool = True) -> None:
        conn, released = self._conn, self._released
        assert conn is not None
        self._conn, self._released = None, []
        try:
            await conn.commit()
        except Exception as exc:  # noqa: BLE001 - every writer of the group hears it; none of its statements stays
            for writer in released:
                if not writer.done():
                    writer.set_exception(_translated(exc) or DatabaseUnavailable("the group's commit failed"))
            with contextlib.suppress(Exception):  # a COMMIT refused (busy) leaves the transaction open
                await conn.rollback()
        else:
            for writer in released:
                if not writer.done():
                    writer.set_result(None)
        finally:
            try:
                await conn.close()
            finally:
                if release:
                    self._lock.release()

    async def _end_group(self, failure: BaseException | None) -> None:
        """Roll the group's transaction back and let the next writer in; writers waiting for its COMMIT are told
        it failed (``failure`` is why)."""
        conn, released = self._conn, self._released
        self._conn, self._released = None, []
        for writer in released:
            if not writer.done():
                writer.set_exception(DatabaseUnavailable(f"the group's transaction failed ({type(failure).__name__})"))
        try:
            if conn is not None:
                try:
                    await conn.rollback()
                finally:
                    await conn.close()
        finally:
            self._lock.release()


class _ReaderAfterCommit(AsyncConnection):
    """SQLite: what a writer reads through after its commit (the group's connection is the next writer's), connected
    as a reader at its first statement: most units read nothing after committing, and a connection taken from the
    pool and given back costs the server a check-out and a check-in each."""

    __slots__ = ()

    async def execute(self, *args: Any, **kwargs: Any) -> Any:  # as AsyncConnection's
        if self.sync_connection is None:
            await self.start()
            await self.execution_options(**{READ_ONLY_OPTION: True})
        return await super().execute(*args, **kwargs)

    @property
    def dialect(self) -> Dialect:
        return self.engine.dialect  # known before connecting

    @dialect.setter
    def dialect(self, dialect: Dialect) -> None:
        self._proxied.dialect = dialect

    async def close(self) -> None:
        if self.sync_connection is not None:
            await super().close()


class _Bound[R]:
    """A repository of a unit of work, made on the unit's connection at its first use and kept until the unit
    changes connection (UnitOfWork._bind): a unit uses a few of its two dozen repositories."""

    def __init__(self, kind: type[R], make: Callable[[UnitOfWork], R] | None = None):
        """``make`` for a repository made otherwise than as most are, ``kind(connection, row_locks)``."""
        made_as_most = cast(Callable[[AsyncConnection, bool], R], kind)
        self._make = make or (lambda uow: made_as_most(uow.conn, uow.row_locks))
        self._name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name
        _BOUND.append(name)

    def __get__(self, uow: UnitOfWork, owner: type | None = None) -> R:
        repo = self._make(uow)
        uow.__dict__[self._name] = repo  # found there from now on: this descriptor defines no __set__
        return repo


_BOUND: list[str] = []


class UnitOfWork:
    conn: AsyncConnection
    row_locks: bool
    audit = _Bound(AuditRepo)
    clinics = _Bound(ClinicRepo)
    doctors = _Bound(DoctorRepo)
    admins = _Bound(AdminRepo)
    patients = _Bound(PatientRepo)
    templates = _Bound(TemplateRepo)
    patient_changes = _Bound(PatientChangeRepo)
    visits = _Bound(VisitRepo, lambda u: VisitRepo(u.conn, u.row_locks, u.audit))
    codes = _Bound(CodeRepo)
    face_failures = _Bound(FaceFailureRepo)
    outbox = _Bound(OutboxRepo)
    api_keys = _Bound(ApiKeyRepo)
    auditors = _Bound(AuditorRepo)
    capture_sessions = _Bound(CaptureSessionRepo)
    idempotency = _Bound(IdempotencyRepo)
    chat_users = _Bound(ChatUserRepo)
    processed_updates = _Bound(ProcessedUpdateRepo)
    queries = _Bound(Queries, lambda u: Queries(u.conn))
    # red flags: the operator's lists and the rules' reads
    deaths = _Bound(DeathListRepo)
    service_rules = _Bound(ServiceRuleRepo)
    flag_queries = _Bound(FlagQueries, lambda u: FlagQueries(u.conn))
    # the patient's record and retention (issue 16)
    record = _Bound(RecordQueries, lambda u: RecordQueries(u.conn))
    retention = _Bound(RetentionRepo, lambda u: RetentionRepo(u.conn))
    channels = _Bound(ChannelRepo)  # issue 14

    def __init__(self, engine: AsyncEngine, *, read_only: bool = False, snapshot: bool = True,
                 writers: SqliteWriters | None = None):
        if not (read_only or snapshot):
            raise ValueError("only a read-only unit of work reads without one snapshot")
        self._engine = engine
        self.row_locks = engine.dialect.name != "sqlite"  # SQLite's BEGIN IMMEDIATE already serialises
        self._read_only = read_only
        # PostgreSQL reads in READ COMMITTED, where each statement sees its own snapshot inside a transaction or
        # outside one: a reader outside saves the BEGIN and ROLLBACK round trips and gives up nothing
        self._autocommit = read_only and engine.dialect.name == "postgresql"
        # SQLite: a reader that needs no single snapshot across its statements (it reads in one) begins nothing, so
        # each statement is a read transaction of its own, one trip to the thread instead of three
        self._statement_reads = not snapshot and engine.dialect.name == "sqlite"
        self._writers = None if read_only else writers
        self._savepoint: _WriterSavepoint | None = None
        self._reader: AsyncConnection | None = None  # SQLite: what the unit reads through after its commit
        self._committed = False

    async def __aenter__(self) -> UnitOfWork:
        try:
            if self._writers is not None:
                self.conn, self._savepoint = await self._writers.enter()
            else:
                self.conn = await self._engine.connect()
                try:
                    if self._autocommit:
                        await self.conn.execution_options(isolation_level="AUTOCOMMIT")
                    elif self._statement_reads:
                        await self.conn.execution_options(**{STATEMENT_READS_OPTION: True})
                    elif self._read_only:  # SQLite: reports read one snapshot, without the write lock
                        await self.conn.execution_options(**{READ_ONLY_OPTION: True})
                    await self.conn.begin()
                except BaseException:
                    await self.conn.close()
                    raise
        except BaseException as exc:
            if (core_error := _translated(exc)) is not None:
                raise core_error from exc
            raise
        self._bind(self.conn)
        return self

    def _bind(self, conn: AsyncConnection) -> None:
        """Every repository on ``conn``: each made at its first use (a unit uses a few of them)."""
        self.conn = conn
        for name in _BOUND:
            self.__dict__.pop(name, None)

    async def commit(self) -> None:
        """Make the unit's writes durable. On SQLite the writer's turn ends here (the group's connection is the
        next writer's): what it reads afterwards it reads through a connection of its own, as a reader."""
        await self.audit.flush()
        if self._writers is not None:
            self._committed = True  # left the group, whether its COMMIT succeeds or not
            await self._writers.leave(self._savepoint, commit=True)
            self._reader = _ReaderAfterCommit(self._engine)
            self._bind(self._reader)
        else:
            await self.conn.commit()
            self._committed = True

    async def rollback(self) -> None:
        await self.conn.rollback()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            await self._end()
        except Exception as cleanup_error:  # a dead connection fails its rollback too
            if (core_error := _translated(cleanup_error)) is None:
                raise
            raise core_error from cleanup_error
        if exc is not None and (core_error := _translated(exc)) is not None:
            raise core_error from exc

    async def _end(self) -> None:
        if self._writers is not None:
            if self._reader is not None:
                await self._reader.close()
            elif not self._committed:
                await self._writers.leave(self._savepoint, commit=False)
            return
        try:
            if not self._committed:
                await self.conn.rollback()
        finally:
            await self.conn.close()


class UnitOfWorkFactory:
    """What services receive: call it to open a fresh unit of work on the shared engine.

    On SQLite, writers in this process queue and commit in groups (:class:`SqliteWriters`).
    """

    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self._writers = SqliteWriters(engine) if engine.dialect.name == "sqlite" else None

    def __call__(self, *, read_only: bool = False, snapshot: bool = True) -> UnitOfWork:
        """A unit of work; ``read_only`` writes nothing, and with ``snapshot=False`` its statements need not read one
        snapshot of the database together (each reads the database as it stands: a unit that reads in one
        statement), which on SQLite saves the BEGIN and ROLLBACK."""
        return UnitOfWork(self.engine, read_only=read_only, snapshot=snapshot, writers=self._writers)

    async def ping(self) -> None:
        """One round trip to the database; DatabaseUnavailable (or the driver's error) when it cannot answer."""
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            if (core_error := _translated(exc)) is not None:
                raise core_error from exc
            raise
