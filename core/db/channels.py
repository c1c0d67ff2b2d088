"""The channels' storage (issue 14): which channels each patient has proven and which failed for good, the outbox
row's channel and delivery reports, the SMS budget per clinic and day, and inbound messages already seen.

Addresses (chat ids, wa_ids, phones) are parameters of statements only, never logged here."""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Table, and_, desc, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from core.db import tables as t
from core.db.repositories import AnyRow
from core.model import OutboxKind, OutboxStatus, Recipient

_ch, _o, _u, _in = t.patient_channels, t.outbox, t.sms_daily_usage, t.inbound_messages


class ChannelRepo:
    def __init__(self, conn: AsyncConnection, row_locks: bool = False):
        self.conn = conn
        self.row_locks = row_locks

    def _insert(self, table: Table) -> Any:  # the dialect's INSERT, for ON CONFLICT
        return (pg_insert if self.conn.dialect.name == "postgresql" else sqlite_insert)(table)

    # --- patient channels -------------------------------------------------------------------------------------------

    async def for_patient(self, patient_id: int) -> list[AnyRow]:
        return list((await self.conn.execute(select(_ch).where(_ch.c.patient_id == patient_id)
                                             .order_by(_ch.c.channel))).all())

    async def by_address(self, channel: str, address: str) -> list[AnyRow]:
        return list((await self.conn.execute(select(_ch).where(
            and_(_ch.c.channel == channel, _ch.c.address == address)).order_by(_ch.c.patient_id))).all())

    async def prove(self, patient_id: int, channel: str, address: str, now: dt.datetime) -> None:
        """The patient proved this address on this channel: it works again, whatever failed before."""
        stmt = self._insert(_ch).values(patient_id=patient_id, channel=channel, address=address, proven_at=now)
        await self.conn.execute(stmt.on_conflict_do_update(
            index_elements=[_ch.c.patient_id, _ch.c.channel],
            set_=dict(address=address, proven_at=now, gone_at=None, gone_reason=None)))

    async def mark_gone(self, patient_id: int, channel: str, address: str, now: dt.datetime, reason: str) -> None:
        """This address can never reach the patient on this channel (blocked the bot, no account, invalid number)."""
        stmt = self._insert(_ch).values(patient_id=patient_id, channel=channel, address=address, proven_at=now,
                                        gone_at=now, gone_reason=reason[:200])
        await self.conn.execute(stmt.on_conflict_do_update(
            index_elements=[_ch.c.patient_id, _ch.c.channel],
            set_=dict(address=address, gone_at=now, gone_reason=reason[:200])))

    async def touch_inbound(self, patient_id: int, channel: str, now: dt.datetime) -> None:
        await self.conn.execute(update(_ch).where(and_(_ch.c.patient_id == patient_id, _ch.c.channel == channel))
                                .values(last_inbound_at=now))

    async def preferred(self, patient_id: int) -> str | None:
        return (await self.conn.execute(select(t.patients.c.preferred_channel).where(
            t.patients.c.id == patient_id))).scalar_one_or_none()

    async def set_preferred(self, patient_id: int, channel: str | None) -> None:
        await self.conn.execute(update(t.patients).where(t.patients.c.id == patient_id)
                                .values(preferred_channel=channel))

    # --- the outbox row's channel -----------------------------------------------------------------------------------

    async def set_outbox_channel(self, message_id: int, *, channel: str | None, channel_message_id: str | None,
                                 note: str | None, worker_id: str | None) -> None:
        where = _o.c.id == message_id
        if worker_id is not None:
            where = and_(where, _o.c.claimed_by == worker_id)
        values: dict[str, object] = {"channel_note": note[:300] if note else None}
        if channel is not None:
            values["channel"] = channel
        if channel_message_id is not None:
            values["channel_message_id"] = channel_message_id[:128]
        await self.conn.execute(update(_o).where(where).values(**values))

    async def set_delivery(self, channel: str, channel_message_id: str, status: str, at: dt.datetime) -> int:
        """A delivery report: the row sent on this channel with this provider id. Returns rows changed."""
        res = await self.conn.execute(update(_o).where(and_(
            _o.c.channel == channel, _o.c.channel_message_id == channel_message_id))
            .values(delivery_status=status, delivery_status_at=at))
        return res.rowcount

    async def outbox_by_provider_id(self, channel: str, channel_message_id: str) -> AnyRow | None:
        return (await self.conn.execute(select(_o).where(and_(
            _o.c.channel == channel, _o.c.channel_message_id == channel_message_id)))).first()

    async def asked_visits(self, channel: str, patient_ids: list[int]) -> list[int]:
        """Visits these patients were asked "were you there?" on this channel, newest first."""
        rows = (await self.conn.execute(
            select(_o.c.visit_id).where(and_(
                _o.c.channel == channel, _o.c.kind == OutboxKind.ATTENDANCE_PROMPT.value,
                _o.c.recipient_kind == Recipient.PATIENT.value, _o.c.recipient_id.in_(patient_ids),
                _o.c.status == OutboxStatus.SENT.value, _o.c.visit_id.is_not(None)))
            .order_by(desc(_o.c.sent_at), desc(_o.c.id)))).all()
        return [r.visit_id for r in rows]

    # --- the SMS budget ---------------------------------------------------------------------------------------------

    async def sms_spend(self, clinic_id: int, day: dt.date, segments: int, cap: int) -> int | None:
        """Count ``segments`` against the clinic's day if they fit under ``cap``: the new total, or None (over the
        cap, nothing counted). One statement, so two dispatchers cannot both take the last segments."""
        await self.conn.execute(self._insert(_u).values(clinic_id=clinic_id, day=day, sent=0)
                                .on_conflict_do_nothing(index_elements=[_u.c.clinic_id, _u.c.day]))
        res = await self.conn.execute(update(_u).where(and_(
            _u.c.clinic_id == clinic_id, _u.c.day == day, _u.c.sent + segments <= cap))
            .values(sent=_u.c.sent + segments).returning(_u.c.sent))
        total = res.scalar_one_or_none()
        return None if total is None else int(total)

    async def sms_refund(self, clinic_id: int, day: dt.date, segments: int) -> None:
        """Give back segments counted for an SMS the gateway did not take (so an outage does not eat the cap)."""
        await self.conn.execute(update(_u).where(and_(_u.c.clinic_id == clinic_id, _u.c.day == day,
                                                      _u.c.sent >= segments)).values(sent=_u.c.sent - segments))

    async def sms_warn_once(self, clinic_id: int, day: dt.date, now: dt.datetime) -> bool:
        """True the first time the clinic's day is warned about (the row exists: sms_spend made it)."""
        res = await self.conn.execute(update(_u).where(and_(
            _u.c.clinic_id == clinic_id, _u.c.day == day, _u.c.warned_at.is_(None))).values(warned_at=now))
        return res.rowcount == 1

    async def sms_used(self, clinic_id: int, day: dt.date) -> int:
        used = (await self.conn.execute(select(_u.c.sent).where(and_(
            _u.c.clinic_id == clinic_id, _u.c.day == day)))).scalar_one_or_none()
        return int(used or 0)

    # --- inbound messages -------------------------------------------------------------------------------------------

    async def inbound_first_seen(self, channel: str, external_id: str, now: dt.datetime,
                                 payload: str | None = None, handled: bool = False) -> bool:
        """Record an inbound message by its provider id: True the first time, False for a replay."""
        res = await self.conn.execute(self._insert(_in).values(
            channel=channel, external_id=external_id[:128], received_at=now, payload=payload,
            handled_at=now if handled else None).on_conflict_do_nothing(
            index_elements=[_in.c.channel, _in.c.external_id]))
        return res.rowcount == 1
