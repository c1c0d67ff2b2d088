"""Turns an outbox row into chat messages, in the recipient's language (never the process's).

Returns None when the message must not go out: no linked chat, the user stopped or blocked the bot, the
visit is no longer relevant, or no code may be issued any more. The one-time code is issued here, at send
time, so the plain code exists only on its way to the patient.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

from aiogram.utils.i18n import I18n

from bot import auditor_texts, dispute_texts, record_texts, texts
from bot.channels.base import PatientMessage
from bot.channels.routing import PatientRouting, Via
from bot.delivery.types import OutboxItem, Outgoing
from bot.i18n import DEFAULT_LOCALE, when
from bot.keyboards import answer_keyboard, change_keyboard, late_prompts_keyboard
from core.channels import ChannelName
from core.checkpoint import parse_checkpoint
from core.errors import NotFound
from core.iin import mask_iin
from core.logs import get_logger
from core.model import (
    Clinic,
    ClinicAdmin,
    Doctor,
    Language,
    OutboxKind,
    OutboxStatus,
    Patient,
    PatientChange,
    Recipient,
    Visit,
    VisitMode,
    VisitState,
)
from core.names import short_name
from core.services import Context
from core.services.auditor_summary import build_auditor_summary
from core.services.chat import chat_language, chat_patients, is_family, reachable_chat
from core.services.codes import issue_code
from core.services.digest import Digest, build_digest
from core.services.visit_lists import visit_line

log = get_logger("rastau.renderer")


class OutboxRenderer:
    def __init__(self, ctx: Context, i18n: I18n, channels: frozenset[ChannelName] | None = None):
        """``channels``: the channels this deployment sends patients' codes and questions on (issue 14); None:
        Telegram alone, as before channels existed."""
        self._ctx, self._i18n = ctx, i18n
        self._routing = PatientRouting(ctx, channels, i18n) if channels is not None else None
        # keyed by the stored kind (OutboxKind is a str): a kind this version does not know finds nothing
        self._kinds: dict[str, Callable[[OutboxItem], Awaitable[list[Outgoing] | None]]] = {
            OutboxKind.VISIT_CODE: self._visit_code, OutboxKind.ATTENDANCE_PROMPT: self._prompt,
            OutboxKind.DISPUTE_NOTICE: self._dispute_notice, OutboxKind.DAILY_DIGEST: self._digest,
            OutboxKind.CHANGE_NOTICE: self._change_notice,
            OutboxKind.CHANGE_DISPUTE_NOTICE: self._change_dispute_notice,
            OutboxKind.AUDITOR_SUMMARY: self._auditor_summary, OutboxKind.AUDIT_CHECKPOINT: self._checkpoint,
            OutboxKind.VISIT_CANCELLED: self._cancelled, OutboxKind.REASON_WAIT_END: self._reason_wait_end,
            OutboxKind.CONSENT_WITHDRAWN_NOTICE: self._withdrawal_notice}  # issue 16

    async def render(self, message: OutboxItem) -> list[Outgoing] | PatientMessage | None:
        build = self._kinds.get(message.kind)
        if build is None:
            log.error("unknown outbox kind; skipped", outbox_id=message.id, kind=message.kind)
            return None
        if self._routing is not None and self._routing.applies(message):  # issue 14: on the patient's channel
            routed = await self._routing.route(message)
            if routed is not Via.TELEGRAM:
                return routed
        try:
            return await build(message)
        except NotFound:
            return None  # the recipient or the visit is gone

    # --- recipients ---------------------------------------------------------------------------------------

    async def _patient(self, patient_id: int) -> tuple[Patient, int, str] | None:
        """(patient, chat, locale) or None when the patient can't or doesn't want to be written to."""
        async with self._ctx.uow(read_only=True) as uow:
            patient = await uow.patients.get(patient_id)
            chat_id = await reachable_chat(uow, patient)
        return None if chat_id is None else (patient, chat_id, patient.language.value)

    async def _admin(self, admin_id: int) -> tuple[ClinicAdmin, int, str] | None:
        """(admin, chat, locale) or None when the admin has no chat or stopped it."""
        async with self._ctx.uow(read_only=True) as uow:
            admin = await uow.admins.get(admin_id)
        if admin.chat_id is None:
            return None
        chosen, stopped = await chat_language(self._ctx, admin.chat_id)
        if stopped:
            return None
        return admin, admin.chat_id, (chosen or Language(DEFAULT_LOCALE)).value

    async def _watcher(self, message: OutboxItem, clinic_id: int) -> tuple[int, str] | None:
        """(chat, locale) of a dispute notice's recipient: an admin of the clinic, or a live auditor whose scope holds
        it now (a scope narrowed or an auditor removed since the notice was queued sends nothing); None otherwise."""
        if message.recipient_kind is Recipient.ADMIN:
            recipient = await self._admin(message.recipient_id)
            if recipient is None or recipient[0].clinic_id != clinic_id:
                return None
            return recipient[1], recipient[2]
        if message.recipient_kind is not Recipient.AUDITOR:
            return None
        return await self._auditor(message.recipient_id, clinic_id)

    async def _auditor(self, auditor_id: int, clinic_id: int | None = None) -> tuple[int, str] | None:
        """(chat, locale) of a live, linked auditor (whose scope holds ``clinic_id`` when one is named), or None."""
        async with self._ctx.uow(read_only=True) as uow:
            auditor = await uow.auditors.get(auditor_id)
        if auditor.removed_at is not None or auditor.chat_id is None:
            return None
        if clinic_id is not None and not auditor.all_clinics and clinic_id not in auditor.clinic_ids:
            return None
        chosen, stopped = await chat_language(self._ctx, auditor.chat_id)
        return None if stopped else (auditor.chat_id, (chosen or auditor.language).value)

    async def _named(self, patient: Patient, chat_id: int) -> str | None:
        """The patient's short name when the chat speaks for several people (a family phone), else None."""
        return short_name(patient.full_name) if is_family(await chat_patients(self._ctx, chat_id)) else None

    async def _code_messages(self, visit_id: int) -> list[tuple[int, int]]:
        """(chat, message) of the visit's code messages that reached a chat, oldest first."""
        async with self._ctx.uow(read_only=True) as uow:
            rows = await uow.queries.sent_code_messages(visit_id)
        return [(r.chat_id, r.chat_message_id) for r in rows
                if r.status == OutboxStatus.SENT.value and r.chat_id is not None and r.chat_message_id is not None]

    async def _visit_facts(self, visit_id: int) -> tuple[Visit, Clinic, Doctor, Patient]:
        async with self._ctx.uow(read_only=True) as uow:
            visit = await uow.visits.get(visit_id)
            clinic = await uow.clinics.get(visit.clinic_id)
            doctor = await uow.doctors.get(visit.doctor_id)
            patient = await uow.patients.get(visit.patient_id)
        return visit, clinic, doctor, patient

    # --- kinds --------------------------------------------------------------------------------------------

    async def _visit_code(self, message: OutboxItem) -> list[Outgoing] | None:
        recipient = await self._patient(message.recipient_id)
        if recipient is None or message.visit_id is None:
            return None
        patient, chat_id, locale = recipient
        visit, clinic, doctor, _owner = await self._visit_facts(message.visit_id)
        if visit.state is not VisitState.SCHEDULED:
            return None
        earlier = await self._code_messages(message.visit_id)
        named = await self._named(patient, chat_id)
        issued = await issue_code(self._ctx, message.visit_id)
        if issued is None:
            return None
        online = visit.mode is VisitMode.ONLINE
        with self._i18n.context(), self._i18n.use_locale(locale):
            text = texts.code_message(issued.code, clinic=clinic.name, doctor=doctor.full_name, start=visit.start,
                                      expires=issued.expires_at, online=online, patient=named)
            void = texts.code_void_message(replaced=True, clinic=clinic.name, doctor=doctor.full_name,
                                           start=visit.start, online=online, patient=named)
        parts = [Outgoing(chat_id=chat_id, text=text)]
        if earlier:  # the code before this one stopped working when this one was issued: say so where it is
            old_chat, old_message = earlier[-1]
            parts.append(Outgoing(chat_id=old_chat, text=void, edit_message_id=old_message))
        return parts

    async def _cancelled(self, message: OutboxItem) -> list[Outgoing] | None:
        """A visit cancelled after its code was sent: tell the patient, and turn every code message of it into
        a note that the code is void (the code itself leaves the chat)."""
        if message.visit_id is None:
            return None
        visit, clinic, doctor, patient = await self._visit_facts(message.visit_id)
        if visit.state is not VisitState.CANCELLED or patient.id != message.recipient_id:
            return None
        sent = await self._code_messages(message.visit_id)
        recipient = await self._patient(message.recipient_id)
        chat_id = recipient[1] if recipient else None  # the notice: only to a chat that may be written to
        where = chat_id if chat_id is not None else (sent[-1][0] if sent else None)
        if where is None:
            return None
        chosen, _stopped = await chat_language(self._ctx, where)
        locale = (chosen or patient.language).value
        named = await self._named(patient, where)
        online = visit.mode is VisitMode.ONLINE
        with self._i18n.context(), self._i18n.use_locale(locale):
            notice = texts.cancelled_notice(clinic=clinic.name, doctor=doctor.full_name, start=visit.start,
                                            online=online, patient=named)
            void = texts.code_void_message(replaced=False, clinic=clinic.name, doctor=doctor.full_name,
                                           start=visit.start, online=online, patient=named)
        parts = [Outgoing(chat_id=chat_id, text=notice)] if chat_id is not None else []
        parts += [Outgoing(chat_id=old_chat, text=void, edit_message_id=old_message) for old_chat, old_message in sent]
        return parts or None

    async def _prompt(self, message: OutboxItem) -> list[Outgoing] | None:
        recipient = await self._patient(message.recipient_id)
        if recipient is None or message.visit_id is None:
            return None
        if len(message.payload.get("visits", [])) > 1:  # chat-disputes: backdated visits gathered in one question
            return await self._late_prompts(message, recipient)
        patient, chat_id, locale = recipient
        visit, clinic, doctor, _owner = await self._visit_facts(message.visit_id)
        if visit.state in (VisitState.CANCELLED, VisitState.PATIENT_CONFIRMED, VisitState.PATIENT_DISPUTED):
            return None  # nothing to ask: cancelled, or already answered (e.g. from /visits)
        named = await self._named(patient, chat_id)
        with self._i18n.context(), self._i18n.use_locale(locale):
            text = texts.attendance_question(clinic=clinic.name, doctor=doctor.full_name, start=visit.start,
                                             online=visit.mode is VisitMode.ONLINE, patient=named)
            markup = answer_keyboard(message.visit_id)
        return [Outgoing(chat_id=chat_id, text=text, reply_markup=markup)]

    async def _reason_wait_end(self, message: OutboxItem) -> list[Outgoing] | None:
        """The wait for a dispute's reason is over by time: its message says so and loses «Skip» (issue 17). Not when
        the reason came, the dispute was taken back, or the chat is no longer the patient's."""
        if message.visit_id is None:
            return None
        visit, _clinic, _doctor, patient = await self._visit_facts(message.visit_id)
        chat_id, message_id = message.payload.get("chat_id"), message.payload.get("message_id")
        if (visit.state is not VisitState.PATIENT_DISPUTED or visit.dispute_reason or patient.chat_id != chat_id
                or visit.answered_at is None or visit.answered_at.isoformat() != message.payload.get("disputed_at")
                or not isinstance(message_id, int) or not isinstance(chat_id, int)):
            return None
        chosen, stopped = await chat_language(self._ctx, chat_id)
        if stopped:
            return None
        with self._i18n.context(), self._i18n.use_locale((chosen or patient.language).value):
            text = dispute_texts.ask_reason_closed()
        return [Outgoing(chat_id=chat_id, text=text, edit_message_id=message_id)]

    async def _late_prompts(self, message: OutboxItem, recipient: tuple[Patient, int, str]) -> list[Outgoing] | None:
        """Several backdated visits of one patient: one message listing those still waiting for an answer, with a row
        of ✅/❌ per visit (issue 17). Nothing when none is left to ask about."""
        patient, chat_id, locale = recipient
        lines = []
        for visit_id in message.payload["visits"]:
            line = await visit_line(self._ctx, int(visit_id))
            if line is not None and line.patient_id == patient.id and line.state not in (
                    VisitState.CANCELLED, VisitState.PATIENT_CONFIRMED, VisitState.PATIENT_DISPUTED):
                lines.append(line)
        if not lines:
            return None
        named = await self._named(patient, chat_id)
        with self._i18n.context(), self._i18n.use_locale(locale):
            text = dispute_texts.late_visits_question(lines, several=named is not None)
            markup = late_prompts_keyboard([line.visit_id for line in lines])
        return [Outgoing(chat_id=chat_id, text=text, reply_markup=markup)]

    async def _dispute_notice(self, message: OutboxItem) -> list[Outgoing] | None:
        if message.visit_id is None:
            return None
        visit, clinic, doctor, patient = await self._visit_facts(message.visit_id)
        recipient = await self._watcher(message, visit.clinic_id)
        if recipient is None:
            return None
        chat_id, locale = recipient
        if message.payload.get("update") == "withdrawn":  # chat-disputes: the patient took "I wasn't there" back
            with self._i18n.context(), self._i18n.use_locale(locale):
                text = dispute_texts.withdrawn_notice(visit_id=message.visit_id, clinic=clinic.name,
                                                      patient=patient.full_name, iin_masked=mask_iin(patient.iin),
                                                      when_=when(visit.start, locale))
            return [Outgoing(chat_id=chat_id, text=text)]
        with self._i18n.context(), self._i18n.use_locale(locale):
            text = texts.dispute_notice(
                visit_id=message.visit_id, clinic=clinic.name, doctor=doctor.full_name, patient=patient.full_name,
                iin_masked=mask_iin(patient.iin), start=visit.start, mode=visit.mode.value,
                verified_by=visit.verified_by.value if visit.verified_by else None, reason=visit.dispute_reason,
                reason_update=message.payload.get("update") == "reason")
        return [Outgoing(chat_id=chat_id, text=text)]

    async def _change_facts(self, change_id: int) -> tuple[PatientChange, Patient, Clinic]:
        async with self._ctx.uow(read_only=True) as uow:
            change = await uow.patient_changes.get(change_id)
            patient = await uow.patients.get(change.patient_id)
            clinic = await uow.clinics.get(change.clinic_id)
        return change, patient, clinic

    async def _change_notice(self, message: OutboxItem) -> list[Outgoing] | None:
        """To the chat named when the change was made: for a new phone that is the old chat, which the change
        itself unlinked from the patient."""
        chat_id = message.payload.get("chat_id")
        change, patient, clinic = await self._change_facts(int(message.payload["change_id"]))
        if chat_id is None or patient.id != message.recipient_id:
            return None
        if chat_id == patient.chat_id and patient.chat_blocked:
            return None
        chosen, stopped = await chat_language(self._ctx, chat_id)
        if stopped:
            return None
        named = await self._named(patient, chat_id)
        with self._i18n.context(), self._i18n.use_locale((chosen or patient.language).value):
            text = texts.change_notice(kind=change.kind, clinic=clinic.name, at=change.at,
                                       phone_tail=patient.phone[-4:], patient=named)
            markup = change_keyboard(change.id)
        return [Outgoing(chat_id=chat_id, text=text, reply_markup=markup)]

    async def _change_dispute_notice(self, message: OutboxItem) -> list[Outgoing] | None:
        change, patient, clinic = await self._change_facts(int(message.payload["change_id"]))
        recipient = await self._watcher(message, change.clinic_id)
        if recipient is None or change.disputed_at is None:
            return None
        chat_id, locale = recipient
        with self._i18n.context(), self._i18n.use_locale(locale):
            text = texts.change_dispute_notice(
                change_id=change.id, kind=change.kind, clinic=clinic.name, patient=patient.full_name,
                iin_masked=mask_iin(patient.iin), at=change.at, actor=change.actor, disputed_at=change.disputed_at)
        return [Outgoing(chat_id=chat_id, text=text)]

    async def _withdrawal_notice(self, message: OutboxItem) -> list[Outgoing] | None:
        """Issue 16: the patient withdrew consent in the chat; to the clinic's admins and auditors."""
        change, patient, clinic = await self._change_facts(int(message.payload["change_id"]))
        recipient = await self._watcher(message, change.clinic_id)
        if recipient is None:
            return None
        chat_id, locale = recipient
        with self._i18n.context(), self._i18n.use_locale(locale):
            text = record_texts.withdrawal_notice(patient=patient.full_name, iin_masked=mask_iin(patient.iin),
                                                  clinic=clinic.name, at=change.at)
        return [Outgoing(chat_id=chat_id, text=text)]

    async def _digest(self, message: OutboxItem) -> list[Outgoing] | None:
        recipient = await self._admin(message.recipient_id)
        if recipient is None:
            return None
        admin, chat_id, locale = recipient
        clinic_id = int(message.payload["clinic_id"])
        if clinic_id != admin.clinic_id:
            return None
        digest = await build_digest(self._ctx, clinic_id, dt.date.fromisoformat(message.payload["day"]))
        with self._i18n.context(), self._i18n.use_locale(locale):
            return digest_parts(digest, chat_id)


    async def _auditor_summary(self, message: OutboxItem) -> list[Outgoing] | None:
        """The day across the auditor's clinics as they are at send time, and its CSV."""
        recipient = await self._auditor(message.recipient_id)
        if recipient is None:
            return None
        chat_id, locale = recipient
        summary = await build_auditor_summary(self._ctx, message.recipient_id,
                                              dt.date.fromisoformat(message.payload["day"]))
        with self._i18n.context(), self._i18n.use_locale(locale):
            return [Outgoing(chat_id=chat_id, text=auditor_texts.summary_message(summary)),
                    Outgoing(chat_id=chat_id, text=auditor_texts.summary_caption(summary),
                             document=(auditor_texts.summary_filename(summary), auditor_texts.summary_csv(summary)))]

    async def _checkpoint(self, message: OutboxItem) -> list[Outgoing] | None:
        """The signed checkpoint file, as made when it was queued, with a short line."""
        recipient = await self._auditor(message.recipient_id)
        if recipient is None:
            return None
        chat_id, locale = recipient
        text = str(message.payload["file"])
        checkpoint = parse_checkpoint(text)
        with self._i18n.context(), self._i18n.use_locale(locale):
            line = auditor_texts.checkpoint_line(checkpoint)
        filename = f"rastau-checkpoint-{checkpoint.at.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}.json"
        return [Outgoing(chat_id=chat_id, text=line, document=(filename, text.encode()))]


def digest_parts(digest: Digest, chat_id: int) -> list[Outgoing]:
    """The digest text and, unless everything is confirmed, its CSV; in the current locale."""
    text, with_csv = texts.digest_messages(digest)
    parts = [Outgoing(chat_id=chat_id, text=text)]
    if with_csv:
        parts.append(Outgoing(chat_id=chat_id, text=texts.digest_caption(digest),
                              document=(texts.digest_filename(digest), texts.digest_csv(digest))))
    return parts
