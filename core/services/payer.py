"""Events for the payer's system (``RASTAU_PAYER_WEBHOOK_URL``): every dispute, enrolment dispute, red flag and
audit checkpoint, queued in the outbox in the same transaction that records it, delivered at least once (retries,
backoff, a dead letter the operator sees in ``rastau payer-events``).

Each event is a JSON object ``{"id", "type", "occurred_at", "data"}``; its id names what happened (``dispute:17``),
so the same event always has the same id and the same body, and a receiver dedupes on the id. The raw body is
signed: ``X-Rastau-Signature: sha256=<hex HMAC-SHA256 of the body under RASTAU_PAYER_WEBHOOK_SECRET>``, and the id
is repeated in ``X-Rastau-Event-Id``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from core.config import Settings
from core.db.uow import UnitOfWork
from core.errors import NotFound
from core.model import OutboxKind, OutboxMessage, OutboxStatus, Recipient
from core.services import Context
from core.services.flags import Flag, find_flags

SIGNATURE_HEADER = "X-Rastau-Signature"
EVENT_ID_HEADER = "X-Rastau-Event-Id"
PAYER_RECIPIENT_ID = 0  # the one webhook; the outbox wants a recipient id


def body_bytes(event: dict[str, Any]) -> bytes:
    """The exact bytes POSTed (and signed): the same for the same event on every attempt."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_valid(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver checks (in constant time) before it trusts a body."""
    return header is not None and hmac.compare_digest(signature(secret, body), header)


async def queue_payer_event(uow: UnitOfWork, settings: Settings, event_id: str, event_type: str, at: dt.datetime,
                            data: dict[str, Any]) -> int:
    """Queue one event for the webhook (1), or nothing when no webhook is configured or the event is queued already
    (0). ``at`` is when the thing happened, so a repeat builds the same body."""
    if not settings.payer_webhook_url:
        return 0
    event = {"id": event_id, "type": event_type, "occurred_at": at.astimezone(dt.UTC).isoformat(), "data": data}
    added = await uow.outbox.add(OutboxMessage(
        kind=OutboxKind.PAYER_EVENT, recipient_kind=Recipient.PAYER, recipient_id=PAYER_RECIPIENT_ID, due_at=at,
        payload=event, dedupe_key=f"payer:{event_id}"), at)
    return int(added is not None)


def flag_event_id(flag: Flag, day: dt.date) -> str:
    """A flag of the day's search: its rule, clinic, doctor and the day searched."""
    return f"flag:{flag.kind.value}:{flag.clinic_id}:{flag.doctor_id or '-'}:{day.isoformat()}"


def flag_data(flag: Flag, day: dt.date) -> dict[str, Any]:
    return {"rule": flag.kind.value, "clinic_id": flag.clinic_id, "doctor_id": flag.doctor_id,
            "day": (flag.day or day).isoformat(), "value": round(flag.value, 4), "threshold": round(flag.threshold, 4),
            "explanation": flag.explain(), "visit_ids": list(flag.visit_ids)}


async def queue_flag_events(ctx: Context, day: dt.date) -> int:
    """The day's red flags (Asia/Almaty), one event each, for the webhook; a repeat for the same day adds nothing."""
    if not ctx.settings.payer_webhook_url:
        return 0
    found = await find_flags(ctx, day, day)
    now = ctx.clock.now()
    queued = 0
    async with ctx.uow() as uow:
        for flag in found:
            queued += await queue_payer_event(uow, ctx.settings, flag_event_id(flag, day), "flag.raised", now,
                                              flag_data(flag, day))
        await uow.commit()
    return queued


@dataclass(frozen=True)
class PayerEvent:
    """An event for the payer as the outbox holds it: what the operator sees in ``rastau payer-events``."""
    outbox_id: int
    event_id: str
    event_type: str
    status: str
    failures: int
    created_at: dt.datetime
    sent_at: dt.datetime | None
    last_error: str | None


async def payer_events(ctx: Context, status: OutboxStatus | None = None) -> list[PayerEvent]:
    """The payer's events, in one status (``failed``: the dead letters) or all, oldest first."""
    async with ctx.uow(read_only=True) as uow:
        rows = await uow.outbox.by_recipient_kind(Recipient.PAYER, status)
    events = []
    for r in rows:
        event = json.loads(r.payload)
        events.append(PayerEvent(r.id, str(event["id"]), str(event["type"]), r.status, r.failures, r.created_at,
                                 r.sent_at, r.last_error))
    return events


async def requeue_payer_event(ctx: Context, outbox_id: int) -> None:
    """Send a dead letter again (after the payer's receiver was fixed), with a fresh retry budget; audit-logged."""
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        if not await uow.outbox.requeue_failed(outbox_id, Recipient.PAYER, now):
            raise NotFound(f"no failed payer event {outbox_id} (rastau payer-events --failed lists them)")
        await uow.audit.append(now, "admin", "payer_event.requeue", f"outbox:{outbox_id}", {}, clinic_id=None)
        await uow.commit()
