"""The patient's record (issue 16): what /mydata reads, and what the retention purge writes.

Reads for /mydata are scoped by patient id and nothing else: the chat's own patients, never a name or a phone, so a
namesake at another clinic, or another patient of the same clinic, never shows. The purge writes counts into
purge_totals beside what it removes, in the same transaction, for /metrics.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Row, and_, delete, exists, func, literal, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from core.db import tables as t

type AnyRow = Row[*tuple[Any, ...]]
DONE_STATUSES = ("sent", "skipped", "blocked", "failed")


class RecordQueries:
    def __init__(self, conn: AsyncConnection):
        self.conn = conn

    async def references(self, patient_ids: list[int]) -> list[AnyRow]:
        """Per patient: active references (still holding a ciphertext), when the newest was stored."""
        ft = t.face_templates
        return list((await self.conn.execute(
            select(ft.c.patient_id, func.count().label("photos"), func.max(ft.c.created_at).label("stored_at"))
            .where(and_(ft.c.patient_id.in_(patient_ids), ft.c.revoked_at.is_(None), func.length(ft.c.sealed) > 0))
            .group_by(ft.c.patient_id))).all())

    async def changes(self, patient_ids: list[int]) -> list[AnyRow]:
        pc, c = t.patient_changes, t.clinics
        return list((await self.conn.execute(
            select(pc.c.id, pc.c.patient_id, pc.c.kind, pc.c.at, pc.c.actor, pc.c.disputed_at,
                   c.c.name.label("clinic"))
            .select_from(pc.join(c, c.c.id == pc.c.clinic_id))
            .where(pc.c.patient_id.in_(patient_ids)).order_by(pc.c.at, pc.c.id))).all())

    async def channels(self, patient_ids: list[int]) -> list[AnyRow]:
        """The channels on file (issue 14): WhatsApp, SMS…, proven when, gone when."""
        pc = t.patient_channels
        return list((await self.conn.execute(select(pc.c.patient_id, pc.c.channel, pc.c.proven_at, pc.c.gone_at)
                                             .where(pc.c.patient_id.in_(patient_ids))
                                             .order_by(pc.c.patient_id, pc.c.channel))).all())

    async def last_visits(self, patient_ids: list[int], limit: int) -> list[AnyRow]:
        v, c = t.visits, t.clinics
        return list((await self.conn.execute(
            select(v.c.id, v.c.patient_id, v.c.start_at, v.c.mode, v.c.state, v.c.verified_by,
                   v.c.attended_claim_at, c.c.name.label("clinic"))
            .select_from(v.join(c, c.c.id == v.c.clinic_id))
            .where(v.c.patient_id.in_(patient_ids)).order_by(v.c.start_at.desc(), v.c.id.desc())
            .limit(limit))).all())

    async def visit_owners(self, patient_ids: list[int]) -> dict[int, int]:
        """visit id -> patient id, for every visit of these patients."""
        return {r.id: r.patient_id for r in (await self.conn.execute(select(t.visits.c.id, t.visits.c.patient_id)
                                                                     .where(t.visits.c.patient_id.in_(patient_ids))))}

    async def audit_about(self, chains: list[str], subjects: list[str]) -> list[AnyRow]:
        """Audit rows of these chains about these subjects (``patient:<id>``, ``visit:<id>``)."""
        a = t.audit_log
        return list((await self.conn.execute(
            select(a.c.chain, a.c.at, a.c.actor, a.c.action, a.c.subject)
            .where(and_(a.c.chain.in_(chains), a.c.subject.in_(subjects))).order_by(a.c.at))).all())

    async def auditor_reads(self, chains: list[str]) -> list[AnyRow]:
        """The payer's auditors' reads of these clinics' records (one audit row per clinic read)."""
        a = t.audit_log
        return list((await self.conn.execute(
            select(a.c.chain, a.c.at, a.c.actor, a.c.action, a.c.details)
            .where(and_(a.c.chain.in_(chains), a.c.actor.like("auditor:%"), a.c.subject.like("auditor:%")))
            .order_by(a.c.at))).all())

    async def purge_totals(self) -> list[AnyRow]:
        return list((await self.conn.execute(select(t.purge_totals).order_by(t.purge_totals.c.kind))).all())


class RetentionRepo:
    """What the purge removes or reduces. Every method takes ``dry_run``: then it only counts."""

    def __init__(self, conn: AsyncConnection):
        self.conn = conn

    async def _count(self, table: Any, condition: Any) -> int:
        return int((await self.conn.execute(select(func.count()).select_from(table).where(condition))).scalar_one())

    async def outbox(self, before: dt.datetime, dry_run: bool) -> int:
        """Delivered (or given up) messages older than ``before``: payload and Telegram message id forgotten."""
        o = t.outbox
        kept = [o.c.payload != "{}", o.c.chat_message_id.is_not(None), o.c.last_error.is_not(None)]
        forget: dict[str, Any] = {"payload": "{}", "chat_message_id": None, "last_error": None}
        if "chat_id" in o.c:  # the chat a sent message is in (revision 0013)
            kept.append(o.c.chat_id.is_not(None))
            forget["chat_id"] = None
        cond = and_(o.c.status.in_(DONE_STATUSES), o.c.created_at < before, or_(*kept))
        if dry_run:
            return await self._count(o, cond)
        return (await self.conn.execute(update(o).where(cond).values(**forget))).rowcount

    async def idempotency(self, before: dt.datetime, dry_run: bool) -> int:
        i = t.idempotency_keys
        cond = i.c.created_at < before
        if dry_run:
            return await self._count(i, cond)
        return (await self.conn.execute(delete(i).where(cond))).rowcount

    async def capture_sessions(self, before: dt.datetime, dry_run: bool) -> int:
        cs = t.capture_sessions
        cond = cs.c.expires_at < before
        if dry_run:
            return await self._count(cs, cond)
        return (await self.conn.execute(delete(cs).where(cond))).rowcount

    async def idle_enrolled(self, before: dt.datetime) -> list[int]:
        """Patients holding a face reference, whose newest visit (or enrolment, when none) is older than ``before``."""
        ft, v = t.face_templates, t.visits
        recent_visit = exists().where(and_(v.c.patient_id == ft.c.patient_id, v.c.start_at >= before))
        rows = (await self.conn.execute(
            select(ft.c.patient_id).where(and_(ft.c.revoked_at.is_(None), func.length(ft.c.sealed) > 0,
                                               ~recent_visit))
            .group_by(ft.c.patient_id).having(func.max(ft.c.created_at) < before).order_by(ft.c.patient_id))).all()
        return [r.patient_id for r in rows]

    async def patients_with_sealed(self, patient_ids: list[int]) -> set[int]:
        """Which of these patients still hold a ciphertext under their own key."""
        if not patient_ids:
            return set()
        ft = t.face_templates
        rows = (await self.conn.execute(select(ft.c.patient_id).distinct().where(and_(
            ft.c.patient_id.in_(patient_ids), ft.c.key_version == 2, func.length(ft.c.sealed) > 0)))).all()
        return {r.patient_id for r in rows}

    async def forget_chat(self, chat_id: int, patient_ids: list[int]) -> int:
        """/unlink: the chat's settings row goes; messages to these patients still pending are skipped; every
        message's payload naming the chat (a notice to an old chat) is emptied. How many messages were touched."""
        o = t.outbox
        await self.conn.execute(delete(t.chat_users).where(t.chat_users.c.chat_id == chat_id))
        names_chat = or_(o.c.payload.like(f'%"chat_id": {int(chat_id)},%'),
                         o.c.payload.like(f'%"chat_id": {int(chat_id)}}}%'))
        touched = (await self.conn.execute(update(o).where(and_(
            o.c.recipient_kind == "patient", o.c.recipient_id.in_(patient_ids), o.c.status == "pending"))
            .values(status="skipped", payload="{}", last_error="the patient unlinked the chat"))).rowcount
        touched += (await self.conn.execute(update(o).where(names_chat).values(payload="{}"))).rowcount
        if "chat_id" in o.c:  # the chat a sent message is in (revision 0013)
            touched += (await self.conn.execute(update(o).where(o.c.chat_id == chat_id)
                                                .values(chat_id=None, chat_message_id=None))).rowcount
        return touched

    async def web_sessions(self, links_before: dt.datetime, sessions_before: dt.datetime, dry_run: bool) -> int:
        """The dashboard's sign-in links and sessions (issue 13), by the dashboard's own rule (core.db.web's prune):
        links expired before ``links_before``, sessions expired before ``sessions_before`` except each user's newest
        (it remembers their language)."""
        s = t.web_sessions
        newest = select(func.max(s.c.id)).group_by(s.c.role, s.c.subject_id).scalar_subquery()
        removed = 0
        for table, cond in ((t.web_links, t.web_links.c.expires_at < links_before),
                            (s, and_(s.c.expires_at < sessions_before, s.c.id.not_in(newest)))):
            removed += await self._count(table, cond) if dry_run else \
                (await self.conn.execute(delete(table).where(cond))).rowcount
        return removed

    async def to_reduce(self, before: dt.datetime) -> list[tuple[int, str]]:
        """(id, IIN) of the patients registered before ``before``, not reduced yet, with no visit since."""
        p, v = t.patients, t.visits
        recent = exists().where(and_(v.c.patient_id == p.c.id, v.c.start_at >= before))
        rows = (await self.conn.execute(select(p.c.id, p.c.iin).where(and_(
            p.c.created_at < before, func.substr(p.c.iin, 8, 1) != "*", ~recent)).order_by(p.c.id))).all()
        return [(r.id, r.iin) for r in rows]

    async def reduce_patient(self, patient_id: int, reduced_iin: str, now: dt.datetime) -> None:
        """What the payer must keep: the row (visits point to it), the name, the IIN reduced; no phone, no chat,
        no channel addresses."""
        await self.conn.execute(update(t.patients).where(t.patients.c.id == patient_id).values(
            iin=reduced_iin, phone="", chat_id=None, chat_blocked=False, updated_at=now))
        await self.conn.execute(delete(t.patient_channels).where(t.patient_channels.c.patient_id == patient_id))

    async def stop_channels(self, patient_ids: list[int], now: dt.datetime) -> int:
        """/unlink: every other channel of these patients (WhatsApp, SMS) is marked gone, so nothing more is sent."""
        pc = t.patient_channels
        return (await self.conn.execute(update(pc).where(and_(pc.c.patient_id.in_(patient_ids), pc.c.gone_at.is_(None)))
                                        .values(gone_at=now, gone_reason="the patient unlinked in the chat"))).rowcount

    async def add_totals(self, counts: dict[str, int], now: dt.datetime) -> None:
        p = t.purge_totals
        ins = (sqlite_insert if self.conn.dialect.name == "sqlite" else postgresql_insert)(p)
        for kind, count in counts.items():
            if not count:
                continue
            stmt = ins.values(kind=kind, rows=count, runs=1, last_at=now)
            await self.conn.execute(stmt.on_conflict_do_update(
                index_elements=[p.c.kind],
                set_={"rows": p.c.rows + literal(count), "runs": p.c.runs + 1, "last_at": now}))
