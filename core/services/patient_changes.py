"""Changes to what identifies a patient (face references, phone, consent), which the patient always hears about.

A clinic that replaces a patient's face with someone else's, or moves the patient's phone, could manufacture
evidence for visits that never happened. So every such change is recorded with who made it, audit-logged, and
told to the patient's chat (the old chat when the phone changed) with a "this wasn't me" button; pressing it
reaches the clinic's admins at once and their digest.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
from dataclasses import dataclass

from core.config import Settings
from core.db.uow import UnitOfWork
from core.errors import DomainError, NotFound
from core.model import OutboxKind, OutboxMessage, Patient, PatientChange, Recipient
from core.services import Context
from core.services.access import Caller
from core.services.alerts import tell_watchers
from core.services.dispute_answers import Audience, dispute_audience

FACE_ENROLLED = "face_enrolled"
FACE_REPLACED = "face_replaced"
FACE_REVOKED = "face_revoked"
PHONE_CHANGED = "phone_changed"
CONSENT_RECORDED = "consent_recorded"
CONSENT_WITHDRAWN = "consent_withdrawn"  # by the patient in the chat (/withdraw): references shredded (issue 16)
KINDS = (FACE_ENROLLED, FACE_REPLACED, FACE_REVOKED, PHONE_CHANGED, CONSENT_RECORDED, CONSENT_WITHDRAWN)
OWN_ACTS = frozenset({CONSENT_WITHDRAWN})  # the patient's own doing in the chat: told there, not here


class ReplacementLimited(DomainError):
    code = "face_replacement_limited"

    def __init__(self, days: int, until: dt.datetime, now: dt.datetime):
        super().__init__(f"this patient's face was already replaced in the last {days} days; a face can be replaced "
                         f"once per {days} days (RASTAU_FACE_REPLACEMENT_MIN_DAYS). Nothing was stored; try again "
                         f"after {until:%Y-%m-%d %H:%M} UTC, and verify visits with the one-time code meanwhile")
        self.retry_after = max(1, math.ceil((until - now).total_seconds()))


async def check_replacement_allowed(uow: UnitOfWork, settings: Settings, patient_id: int, now: dt.datetime) -> None:
    """One replacement of an enrolled face per RASTAU_FACE_REPLACEMENT_MIN_DAYS (0: no limit)."""
    days = settings.face_replacement_min_days
    last = await uow.patient_changes.last_at(patient_id, FACE_REPLACED) if days else None
    if last is not None and now < last + dt.timedelta(days=days):
        raise ReplacementLimited(days, last + dt.timedelta(days=days), now)


async def record_change(uow: UnitOfWork, patient: Patient, kind: str, caller: Caller, now: dt.datetime,
                        chat_id: int | None, *, phone: str | None = None) -> int:
    """Write the change and queue its notice for ``chat_id`` (the chat the patient had before this change) and, on
    the patient's other channels (issue 14: WhatsApp, SMS to ``phone``, the number they had before this change, by
    default their number), whichever the dispatcher finds working: a patient with no Telegram hears of it too. The
    caller writes the audit row naming the returned change id."""
    assert patient.id is not None, "a patient read from storage"
    change_id = await uow.patient_changes.add(patient_id=patient.id, clinic_id=patient.clinic_id, kind=kind, at=now,
                                              actor=caller.actor)
    if chat_id is not None or kind not in OWN_ACTS:
        await uow.outbox.add(OutboxMessage(
            kind=OutboxKind.CHANGE_NOTICE, recipient_kind=Recipient.PATIENT, recipient_id=patient.id, due_at=now,
            payload={"change_id": change_id, "chat_id": chat_id, "phone": phone or patient.phone},
            dedupe_key=notice_key(change_id)), now)
    return change_id


def notice_key(change_id: int) -> str:
    return f"change:{change_id}"


@dataclass(frozen=True)
class DisputeResult:
    change: PatientChange
    changed: bool
    told: Audience | None = None  # who really heard of it (core.services.dispute_answers: one rule for all disputes)


async def dispute_change(ctx: Context, change_id: int, chat_id: int) -> DisputeResult:
    """"This wasn't me", pressed in ``chat_id``. Only the chat the notice went to, or the patient's own chat, may
    say it; any other chat (a forged button) gets NotFound and changes nothing. Recorded once; the clinic's admins
    and its auditors are told at once."""
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        change = await uow.patient_changes.get(change_id, lock=True)
        patient = await uow.patients.get(change.patient_id)
        told = ((await uow.outbox.payload(notice_key(change_id))) or {}).get("chat_id")
        if chat_id not in (told, patient.chat_id):
            raise NotFound(f"change {change_id} not found")
        audience = await dispute_audience(uow, ctx.settings, change.clinic_id)
        if not await uow.patient_changes.mark_disputed(change_id, now):
            return DisputeResult(change, changed=False, told=audience)
        await uow.audit.append(now, "patient", "patient_change.dispute", f"patient:{patient.id}",
                               {"change": change_id, "kind": change.kind, "by": change.actor},
                               clinic_id=change.clinic_id)
        await tell_watchers(uow, ctx.settings, clinic_id=change.clinic_id, kind=OutboxKind.CHANGE_DISPUTE_NOTICE,
                            key=f"change-dispute:{change_id}", now=now, payload={"change_id": change_id},
                            event=("enrolment.disputed", {
                                "change_id": change_id, "clinic_id": change.clinic_id, "patient_id": patient.id,
                                "kind": change.kind, "changed_at": change.at.isoformat(), "changed_by": change.actor,
                                "disputed_at": now.isoformat()}))
        await uow.commit()
    return DisputeResult(dataclasses.replace(change, disputed_at=now), changed=True, told=audience)
