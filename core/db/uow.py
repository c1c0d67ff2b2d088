"""Unit of work: one transaction, all repositories on its connection, commit or roll back as a whole.

State changes and the outbox messages they cause are written through the same unit of work, so either
both land or neither does.
"""
from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core.db.engine import READ_ONLY_OPTION
from core.db.repositories import (AdminRepo, ApiKeyRepo, AuditRepo, ClinicRepo, CodeRepo, DoctorRepo, IdempotencyRepo,
                                  OutboxRepo, PatientRepo, TemplateRepo, VisitRepo)


class UnitOfWork:
    conn: AsyncConnection

    def __init__(self, engine: AsyncEngine, *, read_only: bool = False):
        self._engine = engine
        self._row_locks = engine.dialect.name != "sqlite"  # SQLite's BEGIN IMMEDIATE already serialises
        self._read_only = read_only
        self._committed = False

    async def __aenter__(self) -> "UnitOfWork":
        self.conn = await self._engine.connect()
        if self._read_only:  # reports need a consistent snapshot, not SQLite's write lock
            await self.conn.execution_options(**{READ_ONLY_OPTION: True})
        await self.conn.begin()
        locks = self._row_locks
        self.audit = AuditRepo(self.conn, locks)
        self.clinics = ClinicRepo(self.conn, locks)
        self.doctors = DoctorRepo(self.conn, locks)
        self.admins = AdminRepo(self.conn, locks)
        self.patients = PatientRepo(self.conn, locks)
        self.templates = TemplateRepo(self.conn, locks)
        self.visits = VisitRepo(self.conn, locks, self.audit)
        self.codes = CodeRepo(self.conn, locks)
        self.outbox = OutboxRepo(self.conn, locks)
        self.api_keys = ApiKeyRepo(self.conn, locks)
        self.idempotency = IdempotencyRepo(self.conn, locks)
        return self

    async def commit(self) -> None:
        await self.conn.commit()
        self._committed = True

    async def rollback(self) -> None:
        await self.conn.rollback()

    async def __aexit__(self, exc_type, exc, tb) -> None:
        try:
            if not self._committed:
                await self.conn.rollback()
        finally:
            await self.conn.close()


class UnitOfWorkFactory:
    """What services receive: call it to open a fresh unit of work on the shared engine."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    def __call__(self, *, read_only: bool = False) -> UnitOfWork:
        return UnitOfWork(self.engine, read_only=read_only)
