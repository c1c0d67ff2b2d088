"""The web dashboard's storage (issue 13): one-time sign-in links, browser sessions, and the reads of its day page.

Tokens arrive here already hashed (SHA-256, :func:`core.services.web_sessions.token_hash`): no raw token is ever a
parameter of a statement, so none can reach a database log. A link is spent by one UPDATE that also checks it is
unused and unexpired, so two browsers racing with the same link cannot both open a session.
"""
from __future__ import annotations

import datetime as dt

from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from core.db import tables as t
from core.db.repositories import FRESH, AnyRow
from core.db.uow import UnitOfWork

_l, _s, _v, _d, _p, _o = t.web_links, t.web_sessions, t.visits, t.doctors, t.patients, t.outbox


class WebRepo:
    """Sign-in links and sessions."""

    def __init__(self, conn: AsyncConnection, row_locks: bool = False):
        self.conn = conn
        self.row_locks = row_locks

    async def add_link(self, *, token_hash: str, chat_id: int, role: str, subject_id: int, now: dt.datetime,
                       expires_at: dt.datetime) -> None:
        await self.conn.execute(_l.insert().values(token_hash=token_hash, chat_id=chat_id, role=role,
                                                   subject_id=subject_id, created_at=now, expires_at=expires_at))

    async def links_since(self, chat_id: int, since: dt.datetime) -> int:
        """How many links this chat was given since ``since`` (the rate limit counts them)."""
        return int((await self.conn.execute(select(func.count()).select_from(_l).where(and_(
            _l.c.chat_id == chat_id, _l.c.created_at >= since)))).scalar_one())

    async def spend_link(self, token_hash: str, now: dt.datetime) -> AnyRow | None:
        """Mark the link used and answer it, or None when it is unknown, used already or expired."""
        return (await self.conn.execute(update(_l).where(and_(
            _l.c.token_hash == token_hash, _l.c.used_at.is_(None), _l.c.expires_at > now)).values(used_at=now)
            .returning(_l.c.chat_id, _l.c.role, _l.c.subject_id))).first()

    async def add_session(self, *, token_hash: str, chat_id: int, role: str, subject_id: int, language: str,
                          now: dt.datetime, expires_at: dt.datetime) -> int:
        res = await self.conn.execute(_s.insert().values(
            token_hash=token_hash, chat_id=chat_id, role=role, subject_id=subject_id, language=language,
            created_at=now, expires_at=expires_at).returning(_s.c.id))
        session_id: int = res.scalar_one()
        return session_id

    async def live_session(self, token_hash: str, now: dt.datetime) -> AnyRow | None:
        """The session if it is neither ended nor expired."""
        return (await self.conn.execute(select(_s).where(and_(
            _s.c.token_hash == token_hash, _s.c.ended_at.is_(None), _s.c.expires_at > now)))).first()

    async def end_session(self, session_id: int, now: dt.datetime) -> bool:
        res = await self.conn.execute(update(_s).where(and_(_s.c.id == session_id, _s.c.ended_at.is_(None)))
                                      .values(ended_at=now))
        return res.rowcount == 1

    async def end_sessions_of(self, role: str, subject_id: int, now: dt.datetime) -> int:
        res = await self.conn.execute(update(_s).where(and_(_s.c.role == role, _s.c.subject_id == subject_id,
                                                            _s.c.ended_at.is_(None))).values(ended_at=now))
        return res.rowcount

    async def prune(self, links_before: dt.datetime, sessions_before: dt.datetime) -> int:
        """Forget links that expired before ``links_before`` and sessions that expired before ``sessions_before``,
        but each admin's or auditor's newest session, which remembers their language (the audit log keeps every
        sign-in)."""
        links = await self.conn.execute(_l.delete().where(_l.c.expires_at < links_before))
        newest = select(func.max(_s.c.id)).group_by(_s.c.role, _s.c.subject_id)  # keeps each user's language
        sessions = await self.conn.execute(_s.delete().where(_s.c.expires_at < sessions_before,
                                                             _s.c.id.not_in(newest.scalar_subquery())))
        return int(links.rowcount) + int(sessions.rowcount)

    async def set_language(self, session_id: int, language: str) -> None:
        await self.conn.execute(update(_s).where(_s.c.id == session_id).values(language=language))

    async def last_language(self, role: str, subject_id: int) -> str | None:
        """The language this admin or auditor chose in their latest session (None: never signed in)."""
        row = (await self.conn.execute(select(_s.c.language).where(and_(_s.c.role == role,
                                                                        _s.c.subject_id == subject_id))
                                       .order_by(_s.c.id.desc()).limit(1))).first()
        return None if row is None else str(row.language)


_DAY_VISITS = (select(_v.c.id, _v.c.start_at, _v.c.doctor_id, _d.c.full_name.label("doctor_name"),
                      _p.c.full_name.label("patient_name"), _v.c.mode, _v.c.service_code, _v.c.state,
                      _v.c.verified_by, _v.c.verified_at, _v.c.registered_late, _v.c.created_at,
                      _v.c.answered_at, _v.c.attended_claim_at, FRESH.label("fresh_reference"))
               .join(_d, _d.c.id == _v.c.doctor_id).join(_p, _p.c.id == _v.c.patient_id))


class WebQueries:
    """The day page's reads: one clinic's visits of a day with their evidence, a visit's deliveries."""

    def __init__(self, conn: AsyncConnection):
        self.conn = conn

    async def day_visits(self, clinic_id: int, start: dt.datetime, end: dt.datetime, *, doctor_id: int | None,
                         mode: str | None, state: str | None, limit: int) -> list[AnyRow]:
        """The clinic's visits starting in [start, end), filtered, in start order; at most ``limit``."""
        stmt = _DAY_VISITS.where(_v.c.clinic_id == clinic_id, _v.c.start_at >= start, _v.c.start_at < end)
        if doctor_id is not None:
            stmt = stmt.where(_v.c.doctor_id == doctor_id)
        if mode is not None:
            stmt = stmt.where(_v.c.mode == mode)
        if state is not None:
            stmt = stmt.where(_v.c.state == state)
        return list((await self.conn.execute(stmt.order_by(_v.c.start_at, _v.c.id).limit(limit))).all())

    async def day_visit(self, clinic_id: int, visit_id: int) -> AnyRow | None:
        return (await self.conn.execute(_DAY_VISITS.where(_v.c.clinic_id == clinic_id, _v.c.id == visit_id))).first()

    async def deliveries(self, visit_id: int) -> list[AnyRow]:
        """The chat messages sent for this visit (the code, the "were you there?" prompt): kind and sent_at."""
        return list((await self.conn.execute(select(_o.c.kind, _o.c.sent_at).where(and_(
            _o.c.visit_id == visit_id, _o.c.sent_at.is_not(None))).order_by(_o.c.sent_at, _o.c.id))).all())


def web_repo(uow: UnitOfWork) -> WebRepo:
    """The links and sessions on this unit of work's transaction."""
    return WebRepo(uow.conn, uow.row_locks)


def web_queries(uow: UnitOfWork) -> WebQueries:
    return WebQueries(uow.conn)
