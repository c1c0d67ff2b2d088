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

from aiogram.utils.i18n import I18n

from bot.channels import change_texts
from bot.channels.base import Address, AttendanceQuestion, CodeMessage, Notice, PatientMessage
from bot.delivery.types import OutboxItem
from core.channels import ChannelName
from core.errors import NotFound
from core.model import OutboxKind, Recipient, VisitMode, VisitState
from core.names import short_name
from core.services import Context
from core.services.channels import patient_routes
from core.services.chat import is_family
from core.services.codes import issue_code

ROUTED_KINDS = frozenset({OutboxKind.VISIT_CODE.value, OutboxKind.ATTENDANCE_PROMPT.value,
                          OutboxKind.CHANGE_NOTICE.value})
NO_CHANNEL = "no_channel"  # the outbox row's last_error starts with it when no channel was left


class Via(enum.Enum):
    TELEGRAM = "telegram"  # the renderer's Telegram builder words it


class PatientRouting:
    def __init__(self, ctx: Context, enabled: frozenset[ChannelName], i18n: I18n | None = None):
        """``i18n``: for the words of a change notice on WhatsApp or SMS (without it they go by Telegram only)."""
        self._ctx, self._enabled, self._i18n = ctx, enabled, i18n

    def applies(self, item: OutboxItem) -> bool:
        if item.recipient_kind is not Recipient.PATIENT or item.kind not in ROUTED_KINDS:
            return False
        return item.visit_id is not None or (item.kind == OutboxKind.CHANGE_NOTICE.value and self._i18n is not None)

    async def route(self, item: OutboxItem) -> PatientMessage | Via | None:
        """Via.TELEGRAM; a PatientMessage for another channel (no routes: no_channel); None: nothing to send."""
        if item.kind == OutboxKind.CHANGE_NOTICE.value:
            return await self._change_notice(item)
        assert item.visit_id is not None
        try:
            async with self._ctx.uow(read_only=True) as uow:
                patient = await uow.patients.get(item.recipient_id)
                routes = await patient_routes(uow, patient, self._enabled)
                if routes and routes[0].channel is ChannelName.TELEGRAM:
                    return Via.TELEGRAM  # the Telegram builder reads and checks the visit itself: no second read
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

    async def _change_notice(self, item: OutboxItem) -> PatientMessage | Via | None:
        """A change to the patient's face, phone or consent: to the chat named when it was made (the old chat for a
        new phone) while Telegram reaches it; else on the patient's WhatsApp, or by SMS to the number they had
        before the change. The patient always hears of it, whichever channel they have."""
        assert self._i18n is not None
        payload = item.payload
        chat_id = payload.get("chat_id")
        try:
            async with self._ctx.uow(read_only=True) as uow:
                change = await uow.patient_changes.get(int(payload["change_id"]))
                patient = await uow.patients.get(change.patient_id)
                clinic = await uow.clinics.get(change.clinic_id)
                routes = await patient_routes(uow, patient, self._enabled)
                gone_chats = {r.address for r in await uow.channels.for_patient(item.recipient_id)
                              if r.channel == ChannelName.TELEGRAM.value and r.gone_at is not None}
                phone_sharers = await uow.patients.by_phone(patient.phone) if patient.phone else []
        except NotFound:
            return None
        named = short_name(patient.full_name) if is_family(phone_sharers) else None  # a family number
        if patient.id != item.recipient_id:
            return None
        blocked = chat_id is not None and (str(chat_id) in gone_chats or (chat_id == patient.chat_id
                                                                          and patient.chat_blocked))
        if chat_id is not None and ChannelName.TELEGRAM in self._enabled and not blocked:
            return Via.TELEGRAM  # the renderer's own builder, with its «This wasn't me» button
        phone = payload.get("phone")
        addresses = []
        for route in routes:
            if route.channel is ChannelName.TELEGRAM:
                continue  # a change notice goes to the chat named when it was made, not to a chat linked since
            address = route.address
            if route.channel is ChannelName.SMS:
                if not isinstance(phone, str) or not phone:
                    continue
                address = phone  # for a new phone: the old one, which the clinic cannot have taken over
            addresses.append(Address(route.channel, address, patient_id=patient.id, clinic_id=clinic.id))
        if not addresses:
            return PatientMessage(item.recipient_id, None, ())
        locale = patient.language.value
        contact = self._ctx.settings.sms_dispute_contact.strip()
        with self._i18n.context(), self._i18n.use_locale(locale):
            tail = patient.phone[-4:]
            text = change_texts.change_message(kind=change.kind, clinic=clinic.name, at=change.at, phone_tail=tail,
                                               patient=named, contact=contact)
            short = change_texts.change_sms(kind=change.kind, at=change.at, phone_tail=tail, contact=contact)
        if text is None:
            return None
        return PatientMessage(item.recipient_id, Notice(text=text, locale=locale, short=short), tuple(addresses))
