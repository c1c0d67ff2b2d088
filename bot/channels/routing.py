"""Which channel a patient's code or question goes on (issue 14), decided when the row is rendered.

A row is sent on ONE channel per claim: the patient's first working channel (preferred first, then
core.channels.FALLBACK_ORDER). When Telegram is that channel, the renderer's own Telegram builder words it, exactly as
in a Telegram-only deployment. Otherwise the message is made channel-neutral here (the code issued now, at send time)
for the dispatcher to hand to that channel. When the channel turns out gone for good (ChannelGone, or Telegram's
"blocked the bot"), the dispatcher records why and puts the row back at once; rendered again, it finds the next
channel. So each message reaches the patient once, on the first channel that works, and a row whose patient has no
working channel left ends as ``no_channel``."""
from __future__ import annotations

import enum

from bot.channels.base import Address, AttendanceQuestion, CodeMessage, PatientMessage
from bot.delivery.types import OutboxItem
from core.channels import ChannelName
from core.errors import NotFound
from core.model import OutboxKind, Recipient, VisitMode, VisitState
from core.services import Context
from core.services.channels import patient_routes
from core.services.codes import issue_code

ROUTED_KINDS = frozenset({OutboxKind.VISIT_CODE.value, OutboxKind.ATTENDANCE_PROMPT.value})
NO_CHANNEL = "no_channel"  # the outbox row's last_error starts with it when no channel was left


class Via(enum.Enum):
    TELEGRAM = "telegram"  # the renderer's Telegram builder words it


class PatientRouting:
    def __init__(self, ctx: Context, enabled: frozenset[ChannelName]):
        self._ctx, self._enabled = ctx, enabled

    def applies(self, item: OutboxItem) -> bool:
        return item.kind in ROUTED_KINDS and item.recipient_kind is Recipient.PATIENT and item.visit_id is not None

    async def route(self, item: OutboxItem) -> PatientMessage | Via | None:
        """Via.TELEGRAM; a PatientMessage for another channel (no routes: no_channel); None: nothing to send."""
        assert item.visit_id is not None
        try:
            async with self._ctx.uow(read_only=True) as uow:
                patient = await uow.patients.get(item.recipient_id)
                routes = await patient_routes(uow, patient, self._enabled)
                visit = await uow.visits.get(item.visit_id)
                clinic = await uow.clinics.get(visit.clinic_id)
                doctor = await uow.doctors.get(visit.doctor_id)
        except NotFound:
            return None
        code = item.kind == OutboxKind.VISIT_CODE.value
        if code and visit.state is not VisitState.SCHEDULED:
            return None
        if not code and visit.state in (VisitState.CANCELLED, VisitState.PATIENT_CONFIRMED,
                                        VisitState.PATIENT_DISPUTED):
            return None
        if visit.patient_id != item.recipient_id:
            return None
        if not routes:
            return PatientMessage(item.recipient_id, None, ())
        if routes[0].channel is ChannelName.TELEGRAM:
            return Via.TELEGRAM
        addresses = tuple(Address(r.channel, r.address, patient_id=item.recipient_id, clinic_id=visit.clinic_id)
                          for r in routes)
        locale, online = patient.language.value, visit.mode is VisitMode.ONLINE
        if code:
            issued = await issue_code(self._ctx, item.visit_id)
            if issued is None:
                return None
            return PatientMessage(item.recipient_id, CodeMessage(
                visit_id=item.visit_id, code=issued.code, clinic=clinic.name, doctor=doctor.full_name,
                start=visit.start, expires=issued.expires_at, online=online, locale=locale), addresses)
        return PatientMessage(item.recipient_id, AttendanceQuestion(
            visit_id=item.visit_id, clinic=clinic.name, doctor=doctor.full_name, start=visit.start, online=online,
            locale=locale), addresses)
