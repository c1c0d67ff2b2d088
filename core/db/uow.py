"""Unit of work: one transaction, all repositories on its connection, commit or roll back as a whole.

State changes and the outbox messages they cause are written through the same unit of work, so either
both land or neither does.

The driver's errors do not leave it: a refused unique or foreign key becomes :class:`core.errors.ConcurrentWrite`,
a database that cannot answer :class:`core.errors.DatabaseUnavailable` (the driver's error is the cause), so the
server and the bot need not know SQLAlchemy.
"""
from __future__ import annotations

import asyncio
from types import TracebackType

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core.db.channels import ChannelRepo  # issue 14: patient channels, SMS budget, inbound dedupe
from core.db.engine import READ_ONLY_OPTION
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


class UnitOfWork:
    conn: AsyncConnection

    def __init__(self, engine: AsyncEngine, *, read_only: bool = False, writer: asyncio.Lock | None = None):
        self._engine = engine
        self.row_locks = engine.dialect.name != "sqlite"  # SQLite's BEGIN IMMEDIATE already serialises
        self._read_only = read_only
        # PostgreSQL reads in READ COMMITTED, where each statement sees its own snapshot inside a transaction or
        # outside one: a reader outside saves the BEGIN and ROLLBACK round trips and gives up nothing
        self._autocommit = read_only and engine.dialect.name == "postgresql"
        self._writer = None if read_only else writer
        self._committed = False

    async def __aenter__(self) -> UnitOfWork:
        if self._writer is not None:
            await self._writer.acquire()
        try:
            self.conn = await self._engine.connect()
            try:
                if self._autocommit:
                    await self.conn.execution_options(isolation_level="AUTOCOMMIT")
                elif self._read_only:  # SQLite: reports read one snapshot, without the write lock
                    await self.conn.execution_options(**{READ_ONLY_OPTION: True})
                await self.conn.begin()
            except BaseException:
                await self.conn.close()
                raise
        except BaseException as exc:  # no __aexit__ follows a failed __aenter__: let the next writer in
            self._release_writer()
            if (core_error := _translated(exc)) is not None:
                raise core_error from exc
            raise
        locks = self.row_locks
        self.audit = AuditRepo(self.conn, locks)
        self.clinics = ClinicRepo(self.conn, locks)
        self.doctors = DoctorRepo(self.conn, locks)
        self.admins = AdminRepo(self.conn, locks)
        self.patients = PatientRepo(self.conn, locks)
        self.templates = TemplateRepo(self.conn, locks)
        self.patient_changes = PatientChangeRepo(self.conn, locks)
        self.visits = VisitRepo(self.conn, locks, self.audit)
        self.codes = CodeRepo(self.conn, locks)
        self.face_failures = FaceFailureRepo(self.conn, locks)
        self.outbox = OutboxRepo(self.conn, locks)
        self.api_keys = ApiKeyRepo(self.conn, locks)
        self.auditors = AuditorRepo(self.conn, locks)
        self.capture_sessions = CaptureSessionRepo(self.conn, locks)
        self.idempotency = IdempotencyRepo(self.conn, locks)
        self.chat_users = ChatUserRepo(self.conn, locks)
        self.processed_updates = ProcessedUpdateRepo(self.conn, locks)
        self.queries = Queries(self.conn)
        self.deaths = DeathListRepo(self.conn, locks)  # red flags: the operator's lists and the rules' reads
        self.service_rules = ServiceRuleRepo(self.conn, locks)
        self.flag_queries = FlagQueries(self.conn)
        self.record = RecordQueries(self.conn)  # the patient's record and retention (issue 16)
        self.retention = RetentionRepo(self.conn)
        self.channels = ChannelRepo(self.conn, locks)  # issue 14
        return self

    async def commit(self) -> None:
        await self.audit.flush()
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
        try:
            if not self._committed:
                await self.conn.rollback()
        finally:
            try:
                await self.conn.close()
            finally:
                self._release_writer()

    def _release_writer(self) -> None:
        if self._writer is not None:
            self._writer.release()


class UnitOfWorkFactory:
    """What services receive: call it to open a fresh unit of work on the shared engine.

    On SQLite, writers in this process queue on an asyncio lock before BEGIN IMMEDIATE: SQLite admits one
    writer at a time anyway, and a FIFO queue beats its busy handler, which sleeps up to 100 ms per retry.
    Other processes (the bot beside the server) still meet the busy timeout.
    """

    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self._writer = asyncio.Lock() if engine.dialect.name == "sqlite" else None

    def __call__(self, *, read_only: bool = False) -> UnitOfWork:
        return UnitOfWork(self.engine, read_only=read_only, writer=self._writer)

    async def ping(self) -> None:
        """One round trip to the database; DatabaseUnavailable (or the driver's error) when it cannot answer."""
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            if (core_error := _translated(exc)) is not None:
                raise core_error from exc
            raise
