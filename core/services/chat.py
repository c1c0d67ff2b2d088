"""The chat side of the domain: who a chat is (patient, doctor, admin), linking by a proven phone number,
language choice, /stop, what the chat may list, update dedupe, and queueing the admins' daily digests.

Transport-free on purpose: the bot passes in a chat id and a phone that Telegram proved; nothing here
knows about aiogram.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from core.clock import ALMATY, local_day_bounds, to_local
from core.db import tables as t
from core.errors import InvalidPhone
from core.model import (ClinicAdmin, Doctor, Language, OutboxKind, OutboxMessage, Patient, Recipient, VisitMode, VisitState,
                        ensure_utc)
from core.phone import normalise_phone
from core.services import Context
from core.services.visits import patient_visit

PATIENT_HISTORY_DAYS = 30


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

    @property
    def linked(self) -> bool:
        return bool(self.patients or self.doctors or self.admins)

    @property
    def patient_ids(self) -> list[int]:
        return [p.id for p in self.patients]

    @property
    def preferred_language(self) -> Language | None:
        """The chat's choice wins; a linked patient's stored language comes next."""
        if self.language is not None:
            return self.language
        return self.patients[0].language if self.patients else None


async def chat_profile(ctx: Context, chat_id: int) -> ChatProfile:
    async with ctx.uow() as uow:
        row = (await uow.conn.execute(select(t.chat_users).where(t.chat_users.c.chat_id == chat_id))).first()
        patients = await uow.patients.by_chat(chat_id)
        doctors = await uow.doctors.by_chat(chat_id)
        admins = await uow.admins.by_chat(chat_id)
        clinic_ids = {r.clinic_id for r in (*patients, *doctors, *admins)}
        names = {r.id: r.name for r in (await uow.conn.execute(
            select(t.clinics.c.id, t.clinics.c.name).where(t.clinics.c.id.in_(clinic_ids)))).all()} if clinic_ids else {}
    return ChatProfile(chat_id=chat_id, language=Language(row.language) if row else None,
                       stopped=bool(row.stopped) if row else False, patients=tuple(patients),
                       doctors=tuple(doctors), admins=tuple(admins), clinic_names=names)


async def _upsert_chat_user(uow, chat_id: int, now: dt.datetime, **values) -> None:
    res = await uow.conn.execute(update(t.chat_users).where(t.chat_users.c.chat_id == chat_id)
                                 .values(updated_at=now, **values))
    if res.rowcount == 0:
        values.setdefault("language", Language.RU.value)
        await uow.conn.execute(insert(t.chat_users).values(chat_id=chat_id, created_at=now, updated_at=now,
                                                           **values))


async def set_language(ctx: Context, chat_id: int, language: Language | str) -> None:
    """The user's choice: kept for the chat and copied to every patient row linked to it."""
    language = Language(language)
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        await _upsert_chat_user(uow, chat_id, now, language=language.value)
        await uow.patients.set_language_for_chat(chat_id, language)
        await uow.commit()


@dataclass(frozen=True)
class LinkResult:
    phone: str | None  # normalised; None when the number is not a Kazakhstan number
    patients: int = 0
    doctors: int = 0
    admins: int = 0

    @property
    def linked(self) -> bool:
        return bool(self.patients or self.doctors or self.admins)


async def link_chat_by_phone(ctx: Context, chat_id: int, proven_phone: str, language: Language | str) -> LinkResult:
    """Link the chat to every patient, doctor and admin registered with this phone.

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
        result = LinkResult(phone, patients, doctors, admins)
        if result.linked:
            await _upsert_chat_user(uow, chat_id, now, language=language.value, stopped=False)
            await uow.audit.append(now, "chat_user", "chat.link", f"chat:{chat_id}",
                                   {"patients": patients, "doctors": doctors, "admins": admins,
                                    "privacy_notice": "shown before the contact was shared"})
        await uow.commit()
    return result


async def stop_chat(ctx: Context, chat_id: int) -> int:
    """/stop: unlink the chat everywhere and send it nothing more. Returns how many rows were unlinked."""
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        unlinked = (await uow.patients.unlink_chat(chat_id) + await uow.doctors.unlink_chat(chat_id)
                    + await uow.admins.unlink_chat(chat_id))
        await _upsert_chat_user(uow, chat_id, now, stopped=True)
        await uow.audit.append(now, "chat_user", "chat.stop", f"chat:{chat_id}", {"unlinked": unlinked})
        await uow.commit()
    return unlinked


async def unblock_chat(ctx: Context, chat_id: int) -> None:
    """The user writes to the bot again, so messages can reach them again."""
    async with ctx.uow() as uow:
        await uow.conn.execute(update(t.patients).where(t.patients.c.chat_id == chat_id).values(chat_blocked=False))
        await uow.commit()


async def chat_language(ctx: Context, chat_id: int | None) -> tuple[Language | None, bool]:
    """(chosen language or None, stopped) for a chat; used to render scheduled messages."""
    if chat_id is None:
        return None, False
    async with ctx.uow() as uow:
        row = (await uow.conn.execute(select(t.chat_users.c.language, t.chat_users.c.stopped)
                                      .where(t.chat_users.c.chat_id == chat_id))).first()
    return (Language(row.language), bool(row.stopped)) if row else (None, False)


# --- what a chat may list -------------------------------------------------------------------------------

@dataclass(frozen=True)
class VisitLine:
    visit_id: int
    clinic_id: int
    doctor_id: int
    clinic_name: str
    doctor_name: str
    patient_name: str
    start: dt.datetime
    mode: VisitMode
    state: VisitState
    verified_by: str | None
    answered_at: dt.datetime | None
    attended_claim_at: dt.datetime | None
    patient_reachable: bool


def _visit_query():
    v, d, p, c = t.visits, t.doctors, t.patients, t.clinics
    return (select(v.c.id, v.c.clinic_id, v.c.doctor_id, v.c.start_at, v.c.mode, v.c.state, v.c.verified_by, v.c.answered_at,
                   v.c.attended_claim_at, c.c.name.label("clinic_name"), d.c.full_name.label("doctor_name"),
                   p.c.full_name.label("patient_name"), p.c.chat_id, p.c.chat_blocked)
            .join(d, d.c.id == v.c.doctor_id).join(p, p.c.id == v.c.patient_id).join(c, c.c.id == v.c.clinic_id))


def _line(r) -> VisitLine:
    return VisitLine(visit_id=r.id, clinic_id=r.clinic_id, doctor_id=r.doctor_id, clinic_name=r.clinic_name, doctor_name=r.doctor_name,
                     patient_name=r.patient_name, start=r.start_at, mode=VisitMode(r.mode),
                     state=VisitState(r.state), verified_by=r.verified_by, answered_at=r.answered_at,
                     attended_claim_at=r.attended_claim_at,
                     patient_reachable=r.chat_id is not None and not r.chat_blocked)


async def patient_visits(ctx: Context, patient_ids: list[int], days: int = PATIENT_HISTORY_DAYS) -> list[VisitLine]:
    """The patient's visits that started in the last ``days`` days (and today's later ones), newest first."""
    if not patient_ids:
        return []
    now = ctx.clock.now()
    stmt = (_visit_query().where(and_(t.visits.c.patient_id.in_(patient_ids),
                                      t.visits.c.start_at >= now - dt.timedelta(days=days),
                                      t.visits.c.start_at < now + dt.timedelta(days=1)))
            .order_by(t.visits.c.start_at.desc(), t.visits.c.id.desc()))
    async with ctx.uow() as uow:
        return [_line(r) for r in (await uow.conn.execute(stmt)).all()]


async def doctor_online_today(ctx: Context, doctor_ids: list[int]) -> list[VisitLine]:
    """The doctors' online consultations of today (Asia/Almaty) that still wait for verification."""
    if not doctor_ids:
        return []
    start, end = local_day_bounds(to_local(ctx.clock.now(), ALMATY).date(), ALMATY)
    v = t.visits
    stmt = (_visit_query().where(and_(v.c.doctor_id.in_(doctor_ids), v.c.mode == VisitMode.ONLINE.value,
                                      v.c.state == VisitState.SCHEDULED.value, v.c.start_at >= start,
                                      v.c.start_at < end))
            .order_by(v.c.start_at, v.c.id))
    async with ctx.uow() as uow:
        return [_line(r) for r in (await uow.conn.execute(stmt)).all()]


async def visit_line(ctx: Context, visit_id: int) -> VisitLine | None:
    async with ctx.uow() as uow:
        row = (await uow.conn.execute(_visit_query().where(t.visits.c.id == visit_id))).first()
    return _line(row) if row else None


# --- the patient's explanation reaches the admins too ------------------------------------------------------

async def explain_dispute(ctx: Context, visit_id: int, patient_ids: list[int], reason: str):
    """Store the patient's free-text reason for "I wasn't there" and pass it on to the clinic's admins,
    who already got the dispute itself at once."""
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        visit = await patient_visit(uow, visit_id, patient_ids)
        visit.add_dispute_reason(reason, now)
        await uow.visits.save(visit)
        if visit.dispute_reason:
            for admin in await uow.admins.list_by_clinic(visit.clinic_id):
                await uow.outbox.add(OutboxMessage(
                    kind=OutboxKind.DISPUTE_NOTICE, recipient_kind=Recipient.ADMIN, recipient_id=admin.id, visit_id=visit.id,
                    due_at=now, payload={"update": "reason"}, dedupe_key=f"dispute-reason:{visit.id}:{admin.id}"),
                    now)
        await uow.commit()
    return visit


# --- daily digests -----------------------------------------------------------------------------------------

def digest_dedupe_key(clinic_id: int, day: dt.date, admin_id: int) -> str:
    return f"digest:{clinic_id}:{day.isoformat()}:{admin_id}"


async def queue_daily_digests(ctx: Context, day: dt.date) -> int:
    """One ``daily_digest`` outbox row per admin of every clinic for this local day. A repeat (restart,
    catch-up, a second bot instance) adds nothing: the dedupe key names clinic, day and admin."""
    now = ctx.clock.now()
    queued = 0
    async with ctx.uow() as uow:
        for clinic in await uow.clinics.list():
            for admin in await uow.admins.list_by_clinic(clinic.id):
                added = await uow.outbox.add(OutboxMessage(
                    kind=OutboxKind.DAILY_DIGEST, recipient_kind=Recipient.ADMIN, recipient_id=admin.id, due_at=now,
                    payload={"clinic_id": clinic.id, "day": day.isoformat()},
                    dedupe_key=digest_dedupe_key(clinic.id, day, admin.id)), now)
                queued += added is not None
        await uow.commit()
    return queued


# --- update dedupe -----------------------------------------------------------------------------------------

async def claim_update(ctx: Context, bot_id: int, update_id: int) -> bool:
    """True the first time this update is seen; False for a repeat (webhook retry, a second instance)."""
    async with ctx.uow() as uow:
        try:
            await uow.conn.execute(insert(t.processed_updates).values(update_id=update_id, bot_id=bot_id,
                                                                      at=ctx.clock.now()))
            await uow.commit()
        except IntegrityError:
            return False
    return True


async def release_update(ctx: Context, bot_id: int, update_id: int) -> None:
    """Handling failed: let Telegram's redelivery of this update run again."""
    async with ctx.uow() as uow:
        await uow.conn.execute(delete(t.processed_updates).where(and_(
            t.processed_updates.c.update_id == update_id, t.processed_updates.c.bot_id == bot_id)))
        await uow.commit()


async def prune_processed_updates(ctx: Context, older_than: dt.timedelta = dt.timedelta(days=2)) -> int:
    """Telegram stops redelivering an update after 24 hours; older ids need not be remembered."""
    cutoff = ensure_utc(ctx.clock.now()) - older_than
    async with ctx.uow() as uow:
        res = await uow.conn.execute(delete(t.processed_updates).where(t.processed_updates.c.at < cutoff))
        await uow.commit()
    return res.rowcount
