"""Who hears at once that a patient disputes something: the clinic's own admins, the payer's auditors whose scope
holds the clinic, and the payer's webhook when one is configured. One rule for the visit disputes and the disputes
of changes to a patient's face, phone or consent.

The auditors are told in the same transaction as the dispute is recorded, whether or not the clinic has an admin
with a chat: an admin complicit in the fraud can ignore a notice, but cannot keep it from the payer.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from core.config import Settings
from core.db.uow import UnitOfWork
from core.model import OutboxKind, OutboxMessage, Recipient
from core.services.payer import queue_payer_event


async def tell_watchers(uow: UnitOfWork, settings: Settings, *, clinic_id: int, kind: OutboxKind, key: str,
                        now: dt.datetime, event: tuple[str, dict[str, Any]], visit_id: int | None = None,
                        payload: dict[str, Any] | None = None) -> int:
    """Queue ``kind`` to every admin of the clinic and every live auditor watching it, and ``event`` (its type and
    data) to the payer's webhook; ``key`` names the event (a repeat adds nothing). How many messages were queued."""
    body = payload or {}
    queued = 0
    for admin in await uow.admins.list_by_clinic(clinic_id):
        assert admin.id is not None, "an admin read from storage"
        queued += await uow.outbox.add(OutboxMessage(
            kind=kind, recipient_kind=Recipient.ADMIN, recipient_id=admin.id, visit_id=visit_id, due_at=now,
            payload=body, dedupe_key=f"{key}:{admin.id}"), now) is not None
    for auditor in await uow.auditors.watching(clinic_id):
        queued += await uow.outbox.add(OutboxMessage(
            kind=kind, recipient_kind=Recipient.AUDITOR, recipient_id=auditor.id, visit_id=visit_id, due_at=now,
            payload=body, dedupe_key=f"{key}:auditor:{auditor.id}"), now) is not None
    event_type, data = event
    return queued + await queue_payer_event(uow, settings, key, event_type, now, data)
