"""WhatsApp's storage (issue 14): the webhook's durable queue, the patients' WhatsApp channel rows, and delivery
statuses on the outbox.

The webhook answers Meta only after its events are here (a 200 means "never sent again"), and a worker handles them
afterwards. Each event is keyed by the provider's id (a message's wamid, or ``status:<wamid>:<status>``), inserted or
ignored: a replayed body queues nothing. A status only moves forward (sent < delivered < read; failed from nothing
or sent), so a late or replayed "sent" cannot hide that a code was delivered, and "read" cannot be faked back to
"failed".
"""
from __future__ import annotations

import datetime as dt

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from core.db import tables as t
from core.db.repositories import AnyRow, _insert_or_ignore
from core.db.uow import UnitOfWork

CHANNEL = "whatsapp"
_RANK = {None: 0, "sent": 1, "delivered": 2, "read": 3}
_i, _c, _o = t.inbound_messages, t.patient_channels, t.outbox


def whatsapp_repo(uow: UnitOfWork) -> WhatsAppRepo:
    """This repository on the unit of work's connection and transaction."""
    return WhatsAppRepo(uow.conn, uow.row_locks)


class WhatsAppRepo:
    def __init__(self, conn: AsyncConnection, row_locks: bool = False):
        self.conn = conn
        self.row_locks = row_locks

    # --- the webhook's queue ------------------------------------------------------------------------------------

    async def enqueue(self, external_id: str, payload: str, now: dt.datetime) -> bool:
        """Queue one event unless its id is already known; True when it is new."""
        res = await self.conn.execute(_insert_or_ignore(self.conn)(_i).values(
            channel=CHANNEL, external_id=external_id[:128], received_at=now, payload=payload)
            .on_conflict_do_nothing())
        return res.rowcount == 1

    async def pending(self, limit: int) -> list[AnyRow]:
        stmt = (select(_i).where(and_(_i.c.channel == CHANNEL, _i.c.handled_at.is_(None), _i.c.payload.is_not(None)))
                .order_by(_i.c.received_at, _i.c.external_id).limit(limit))
        return list((await self.conn.execute(stmt)).all())

    async def lock_pending(self, external_id: str) -> bool:
        """Lock the event for this transaction if it is still unhandled and nobody else holds it."""
        stmt = select(_i.c.external_id).where(and_(_i.c.channel == CHANNEL, _i.c.external_id == external_id,
                                                    _i.c.handled_at.is_(None)))
        if self.row_locks:
            stmt = stmt.with_for_update(skip_locked=True)
        return (await self.conn.execute(stmt)).first() is not None

    async def mark_handled(self, external_id: str, now: dt.datetime) -> None:
        await self.conn.execute(update(_i).where(and_(_i.c.channel == CHANNEL, _i.c.external_id == external_id))
                                .values(handled_at=now))

    # --- patients' WhatsApp channel rows ------------------------------------------------------------------------

    async def link(self, patient_id: int, wa_id: str, now: dt.datetime) -> str:
        """The patient proved this wa_id by writing from it: their WhatsApp channel, working again if it had
        gone, its window open from now. Answers "new" (not linked to this address before), "same", or "held": the
        patient's WhatsApp at another number still works, so this one is not linked (a phone number changed in the
        clinic's records does not move a working channel to it: the clinic could otherwise take it over)."""
        row = (await self.conn.execute(select(_c).where(and_(_c.c.patient_id == patient_id,
                                                             _c.c.channel == CHANNEL)))).first()
        if row is None:
            await self.conn.execute(_c.insert().values(patient_id=patient_id, channel=CHANNEL, address=wa_id,
                                                       proven_at=now, last_inbound_at=now))
            return "new"
        if row.address != wa_id and row.gone_at is None:
            return "held"
        values: dict[str, object] = dict(last_inbound_at=now, gone_at=None, gone_reason=None)
        if row.address != wa_id:
            values.update(address=wa_id, proven_at=now)
        await self.conn.execute(update(_c).where(and_(_c.c.patient_id == patient_id, _c.c.channel == CHANNEL))
                                .values(**values))
        return "new" if row.address != wa_id else "same"

    async def patients_at(self, wa_id: str) -> list[int]:
        """The patients whose working WhatsApp channel is this wa_id."""
        rows = (await self.conn.execute(select(_c.c.patient_id).where(and_(
            _c.c.channel == CHANNEL, _c.c.address == wa_id, _c.c.gone_at.is_(None))))).all()
        return [r.patient_id for r in rows]

    async def last_inbound(self, patient_id: int) -> dt.datetime | None:
        row = (await self.conn.execute(select(_c.c.last_inbound_at).where(and_(
            _c.c.patient_id == patient_id, _c.c.channel == CHANNEL, _c.c.gone_at.is_(None))))).first()
        return row.last_inbound_at if row else None

    async def close_window(self, wa_id: str) -> None:
        """WhatsApp said the window is closed (131047): forget the last inbound time, so the next send is a template."""
        await self.conn.execute(update(_c).where(and_(_c.c.channel == CHANNEL, _c.c.address == wa_id))
                                .values(last_inbound_at=None))

    async def mark_gone(self, wa_id: str, reason: str, now: dt.datetime) -> int:
        res = await self.conn.execute(update(_c).where(and_(_c.c.channel == CHANNEL, _c.c.address == wa_id,
                                                            _c.c.gone_at.is_(None)))
                                      .values(gone_at=now, gone_reason=reason[:200]))
        return int(res.rowcount)

    # --- delivery statuses ----------------------------------------------------------------------------------------

    async def outbox_row(self, wamid: str) -> AnyRow | None:
        return (await self.conn.execute(select(_o).where(and_(_o.c.channel == CHANNEL,
                                                              _o.c.channel_message_id == wamid)))).first()

    async def record_status(self, wamid: str, status: str, at: dt.datetime) -> bool:
        """Record a delivery status on the outbox row that carried ``wamid`` if it moves the row forward."""
        if status == "failed":
            allowed = or_(_o.c.delivery_status.is_(None), _o.c.delivery_status == "sent")
        else:
            lower = [s for s, rank in _RANK.items() if s is not None and rank < _RANK[status]]
            allowed = or_(_o.c.delivery_status.is_(None), _o.c.delivery_status.in_(lower))
        res = await self.conn.execute(update(_o).where(and_(_o.c.channel == CHANNEL, _o.c.channel_message_id == wamid,
                                                            allowed))
                                      .values(delivery_status=status, delivery_status_at=at))
        return bool(res.rowcount)

    async def send_again(self, outbox_id: int, now: dt.datetime, note: str) -> bool:
        """A message WhatsApp accepted and later failed (131047, 131026) goes back to the queue at once, to be sent
        as a template or on the next channel: it is not lost. Only a row that was marked sent is reopened."""
        res = await self.conn.execute(update(_o).where(and_(_o.c.id == outbox_id, _o.c.status == "sent")).values(
            status="pending", due_at=now, claimed_by=None, claim_expires_at=None, channel_note=note[:300],
            last_error=note[:300], parts_sent=0))
        return bool(res.rowcount)

    async def set_language(self, patient_ids: list[int], language: str, now: dt.datetime) -> None:
        """The language the patient chose on WhatsApp, for every patient row that wa_id proves."""
        if patient_ids:
            await self.conn.execute(update(t.patients).where(t.patients.c.id.in_(patient_ids))
                                    .values(language=language, updated_at=now))

    async def awaiting_reason(self, patient_ids: list[int], since: dt.datetime) -> int | None:
        """The patients' newest visit disputed since ``since`` that has no reason yet."""
        if not patient_ids:
            return None
        v = t.visits
        row = (await self.conn.execute(select(v.c.id).where(and_(
            v.c.patient_id.in_(patient_ids), v.c.state == "patient_disputed", v.c.dispute_reason.is_(None),
            v.c.answered_at >= since)).order_by(v.c.answered_at.desc(), v.c.id.desc()).limit(1))).first()
        return int(row.id) if row else None
