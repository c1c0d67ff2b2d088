"""Who a chat is (patient, doctor, admin, auditor) and what it chose: linking by a proven phone number, the language,
/stop. What a chat may list is in :mod:`core.services.visit_lists`, update dedupe in :mod:`core.services.updates`.

Transport-free on purpose: the bot passes in a chat id and a phone that Telegram proved; nothing here
knows about aiogram.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from core.db.repositories import StoredAuditor
from core.db.uow import UnitOfWork
from core.errors import InvalidPhone
from core.model import ClinicAdmin, Doctor, Language, Patient
from core.phone import normalise_phone
from core.services import Context


@dataclass(frozen=True)
class ChatProfile:
    """Everything a chat is linked to. One phone may belong to several rows (e.g. registered at two clinics)."""
    chat_id: int
    language: Language | None  # the chat's own choice; None until the user picked one
    stopped: bool
    patients: tuple[Patient, ...] = ()
    doctors: tuple[Doctor, ...] = ()
    admins: tuple[ClinicAdmin, ...] = ()
    clinic_names: dict[int, str] = field(default_factory=dict)
    auditors: tuple[StoredAuditor, ...] = ()  # the payer's auditors (live ones only)

    @property
    def linked(self) -> bool:
        return bool(self.patients or self.doctors or self.admins or self.auditors)

    @property
    def patient_ids(self) -> list[int]:
        return [p.id for p in self.patients if p.id is not None]  # read from storage: every id is set

    @property
    def family(self) -> bool:
        """The chat speaks for more than one person (a family phone): every message must name whom it is about.
        One person registered at two clinics is two rows with one IIN, and still one person."""
        return is_family(self.patients)

    @property
    def preferred_language(self) -> Language | None:
        """The chat's choice wins; a linked patient's stored language comes next."""
        if self.language is not None:
            return self.language
        return self.patients[0].language if self.patients else None


def is_family(patients: Sequence[Patient]) -> bool:
    """More than one person among these patient rows (told apart by IIN)."""
    return len({p.iin for p in patients}) > 1


async def chat_patients(ctx: Context, chat_id: int) -> list[Patient]:
    """The patient rows linked to a chat (a family phone links several)."""
    async with ctx.uow(read_only=True) as uow:
        return await uow.patients.by_chat(chat_id)


async def chat_profile(ctx: Context, chat_id: int) -> ChatProfile:
    async with ctx.uow() as uow:
        row = await uow.queries.chat_user(chat_id)
        patients = await uow.patients.by_chat(chat_id)
        doctors = await uow.doctors.by_chat(chat_id)
        admins = await uow.admins.by_chat(chat_id)
        auditors = await uow.auditors.by_chat(chat_id)
        linked: list[Patient | Doctor | ClinicAdmin] = [*patients, *doctors, *admins]
        names = await uow.queries.clinic_names({r.clinic_id for r in linked})
    return ChatProfile(chat_id=chat_id, language=Language(row.language) if row else None,
                       stopped=bool(row.stopped) if row else False, patients=tuple(patients),
                       doctors=tuple(doctors), admins=tuple(admins), clinic_names=names, auditors=tuple(auditors))


async def set_language(ctx: Context, chat_id: int, language: Language | str) -> None:
    """The user's choice: kept for the chat and copied to every patient row linked to it."""
    language = Language(language)
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        await uow.chat_users.upsert(chat_id, now, language=language)
        await uow.patients.set_language_for_chat(chat_id, language)
        await uow.commit()


@dataclass(frozen=True)
class LinkResult:
    phone: str | None  # normalised; None when the number is not a Kazakhstan number
    patients: int = 0
    doctors: int = 0
    admins: int = 0
    auditors: int = 0

    @property
    def linked(self) -> bool:
        return bool(self.patients or self.doctors or self.admins or self.auditors)


async def link_chat_by_phone(ctx: Context, chat_id: int, proven_phone: str, language: Language | str) -> LinkResult:
    """Link the chat to every patient, doctor, admin and live auditor registered with this phone.

    The caller must have proven the phone (Telegram: a shared contact whose user_id is the sender).
    Sharing it after the privacy notice is the user's agreement; the audit log keeps when it happened.
    """
    try:
        phone = normalise_phone(proven_phone)  # Telegram sends "77011234567" or "+77011234567"
    except InvalidPhone:
        return LinkResult(phone=None)
    language = Language(language)
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        patients = await uow.patients.set_chat(phone, chat_id, language)
        doctors = await uow.doctors.set_chat(phone, chat_id)
        admins = await uow.admins.set_chat(phone, chat_id)
        auditors = await uow.auditors.set_chat(phone, chat_id)
        result = LinkResult(phone, patients, doctors, admins, auditors)
        if result.linked:
            await uow.chat_users.upsert(chat_id, now, language=language, stopped=False)
            await uow.audit.append(now, "chat_user", "chat.link", f"chat:{chat_id}",
                                   {"patients": patients, "doctors": doctors, "admins": admins, "auditors": auditors,
                                    "privacy_notice": "shown before the contact was shared"},
                                   clinic_id=None)  # a chat may reach several clinics: the operator's chain
        await uow.commit()
    return result


async def stop_chat(ctx: Context, chat_id: int) -> int:
    """/stop: unlink the chat everywhere and send it nothing more. Returns how many rows were unlinked."""
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        unlinked = (await uow.patients.unlink_chat(chat_id) + await uow.doctors.unlink_chat(chat_id)
                    + await uow.admins.unlink_chat(chat_id) + await uow.auditors.unlink_chat(chat_id))
        await uow.chat_users.upsert(chat_id, now, stopped=True)
        await uow.audit.append(now, "chat_user", "chat.stop", f"chat:{chat_id}", {"unlinked": unlinked},
                               clinic_id=None)
        await uow.commit()
    return unlinked


async def chat_language(ctx: Context, chat_id: int | None) -> tuple[Language | None, bool]:
    """(chosen language or None, stopped) for a chat; used to render scheduled messages."""
    if chat_id is None:
        return None, False
    async with ctx.uow() as uow:
        row = await uow.queries.chat_user(chat_id)
    return (Language(row.language), bool(row.stopped)) if row else (None, False)


async def reachable_chat(uow: UnitOfWork, patient: Patient) -> int | None:
    """The chat that carries messages to the patient (linked, not blocked, not stopped), or None. One rule for the
    sender, for an honest answer to a code request, and for flagging a face nobody could tell the patient about."""
    if patient.chat_id is None or patient.chat_blocked:
        return None
    chat = await uow.queries.chat_user(patient.chat_id)
    return None if chat is not None and chat.stopped else patient.chat_id
