"""The rules around a patient's "I wasn't there" (issue 17): who really heard of it, how long the bot takes a reason
for it, and taking it back.

- Who was told: one rule for every reply to the patient. The clinic's admins count only when one of them has a linked
  chat that did not stop; the payer counts when one of its auditors watching the clinic has a linked chat, or the
  payer's webhook is configured. Otherwise the dispute is recorded only (and shown in the auditors' exports).
- The reason: taken only within ``dispute_reason_minutes`` of the dispute, so a message written a day later (a
  question about the next appointment) is never filed as one.
- The take-back: only from the patient's own chat and only within ``dispute_undo_minutes`` of the dispute; the visit
  returns to the state it was disputed from, both events stay in the audit log, and everyone who heard of the
  dispute hears of the take-back. No clinic-side route exists for it: a dishonest clinic cannot withdraw a dispute.
"""
from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
from dataclasses import dataclass, replace

from core.config import Settings
from core.db.uow import UnitOfWork
from core.errors import IllegalTransition, NotFound
from core.model import ANSWER_CORRECTION_WINDOW, OutboxKind, OutboxMessage, Recipient, Visit, VisitState
from core.services import Context
from core.services.alerts import tell_watchers
from core.services.visit_lists import PATIENT_HISTORY_DAYS, VisitLine, patient_visits, visit_line, visit_line_of

DISPUTE_STEP = "patient_dispute"
WITHDRAW_STEP = "patient_withdraw_dispute"


class Audience(str, enum.Enum):
    """Who really heard of a patient's dispute, as the patient is told."""
    ADMINS_AND_PAYER = "admins_and_payer"
    ADMINS = "admins"
    PAYER = "payer"
    RECORDED_ONLY = "recorded_only"


class TakeBackClosed(IllegalTransition):
    code = "take_back_closed"


class ReasonTooLate(IllegalTransition):
    code = "reason_too_late"


async def dispute_audience(uow: UnitOfWork, settings: Settings, clinic_id: int) -> Audience:
    """Whether a dispute of this clinic reaches a person: an admin's or an auditor's live chat, or the payer's
    webhook. The same reachability the sender applies (linked chat, not stopped)."""
    admins = False
    for admin in await uow.admins.list_by_clinic(clinic_id):
        if admin.chat_id is not None and await _chat_live(uow, admin.chat_id):
            admins = True
            break
    payer = bool(settings.payer_webhook_url)
    if not payer:
        for auditor in await uow.auditors.watching(clinic_id):
            if auditor.chat_id is not None and await _chat_live(uow, auditor.chat_id):
                payer = True
                break
    if admins:
        return Audience.ADMINS_AND_PAYER if payer else Audience.ADMINS
    return Audience.PAYER if payer else Audience.RECORDED_ONLY


async def _chat_live(uow: UnitOfWork, chat_id: int) -> bool:
    row = await uow.queries.chat_user(chat_id)
    return row is None or not row.stopped


def chat_mark(settings: Settings, chat_id: int) -> str:
    """What the dispute's event keeps of the chat that said it: a keyed hash (the visit's history is shown to the
    clinic, which must not learn the patient's chat id from it), enough to check a take-back comes from that chat."""
    digest = hmac.new(settings.code_key_bytes(), f"dispute-chat:{chat_id}".encode(), hashlib.sha256).hexdigest()
    return f"chat:{digest[:24]}"


def reason_window(settings: Settings) -> dt.timedelta:
    return dt.timedelta(minutes=settings.dispute_reason_minutes)


def undo_window(settings: Settings) -> dt.timedelta:
    return dt.timedelta(minutes=settings.dispute_undo_minutes)


def reason_welcome(settings: Settings, disputed_at: dt.datetime | None, now: dt.datetime) -> bool:
    """Whether a reason for a dispute made at ``disputed_at`` is still taken at ``now``."""
    return disputed_at is not None and dt.timedelta(0) <= now - disputed_at <= reason_window(settings)


def check_reason_welcome(settings: Settings, visit: Visit, now: dt.datetime) -> None:
    if visit.state is VisitState.PATIENT_DISPUTED and not reason_welcome(settings, visit.answered_at, now):
        raise ReasonTooLate(visit.id, visit.state.value, "add dispute reason",
                            f"a reason is taken for {settings.dispute_reason_minutes} minutes after the answer")


async def dispute_number(uow: UnitOfWork, visit_id: int | None) -> int:
    """How many times this visit has been disputed (1 for the first): a dispute made again after a take-back is a new
    event for everyone who hears of it, so its notices need keys of their own."""
    assert visit_id is not None, "a visit read from storage"
    return sum(1 for event in await uow.visits.events(visit_id) if event.step == DISPUTE_STEP)


def dispute_key(prefix: str, visit_id: int | None, number: int) -> str:
    """``dispute:7`` for the first dispute of visit 7 (the key the payer has always seen), ``dispute:7:2`` after."""
    return f"{prefix}:{visit_id}" if number <= 1 else f"{prefix}:{visit_id}:{number}"


async def withdraw_dispute(ctx: Context, visit_id: int, patient_ids: list[int], chat_id: int) -> tuple[Visit, bool,
                                                                                                         Audience]:
    """"I was there after all": only the chat the dispute was given in, while it is still the patient's, only within
    the take-back window. Returns
    (visit, changed, who hears of it); a repeat (nothing to take back any more) changes nothing."""
    from core.services.visits import dispute_data, patient_visit  # visits imports this module

    now = ctx.clock.now()
    async with ctx.uow() as uow:
        visit = await patient_visit(uow, visit_id, patient_ids)
        patient = await uow.patients.get(visit.patient_id)
        if patient.chat_id != chat_id:
            raise NotFound(f"visit {visit_id} not found")  # not the patient's own chat: reveal nothing
        audience = await dispute_audience(uow, ctx.settings, visit.clinic_id)
        if visit.state is not VisitState.PATIENT_DISPUTED:
            return visit, False, audience
        assert visit.answered_at is not None, "a disputed visit has its answer time"
        if now - visit.answered_at > undo_window(ctx.settings):
            raise TakeBackClosed(visit.id, visit.state.value, "withdraw dispute",
                                 f"an answer can be taken back for {ctx.settings.dispute_undo_minutes} minutes")
        events = await uow.visits.events(visit_id)
        disputed = [e for e in events if e.step == DISPUTE_STEP][-1]
        if disputed.detail != chat_mark(ctx.settings, chat_id):  # the patient's chat now, but not the one that said
            raise NotFound(f"visit {visit_id} not found")  # it: a clinic relinking the number to its chat gains nothing
        back_to = disputed.from_state or VisitState.SCHEDULED
        confirmed = [e.at for e in events if e.step == "patient_confirm"]
        answered_before = confirmed[-1] if back_to is VisitState.PATIENT_CONFIRMED and confirmed else None
        data = {**dispute_data(visit), "withdrawn_at": now.isoformat()}
        visit.withdraw_dispute(now, back_to, answered_before)
        await uow.visits.save(visit)
        number = sum(1 for e in events if e.step == DISPUTE_STEP)
        await tell_watchers(uow, ctx.settings, clinic_id=visit.clinic_id, kind=OutboxKind.DISPUTE_NOTICE,
                            key=dispute_key("dispute-withdrawn", visit.id, number), now=now, visit_id=visit.id,
                            payload={"update": "withdrawn"}, event=("visit.dispute_withdrawn", data))
        await uow.commit()
    return visit, True, audience


# --- what the patient may still answer about a visit (/visits, one visit at a time) ------------------------------

def answer_choices(line: VisitLine, now: dt.datetime) -> tuple[bool, bool]:
    """(may say "I was there", may say "I wasn't there") about a visit now: the same rules the visit's own
    transitions apply, so a button is shown only where pressing it can record something."""
    if line.start > now or line.state is VisitState.CANCELLED:
        return False, False
    yes = line.state is VisitState.VERIFIED or (line.state is VisitState.UNVERIFIED and line.attended_claim_at is None)
    if line.state is VisitState.PATIENT_DISPUTED:
        no = False
    elif line.state is VisitState.PATIENT_CONFIRMED:
        no = line.answered_at is not None and now - line.answered_at <= ANSWER_CORRECTION_WINDOW
    elif line.attended_claim_at is not None:  # "I was there" to an unverified visit: answered, as a confirmation is
        no = now - line.attended_claim_at <= ANSWER_CORRECTION_WINDOW
    else:
        no = True
    return yes, no


@dataclass(frozen=True)
class VisitPage:
    lines: list[VisitLine]
    choices: list[tuple[bool, bool]]
    page: int
    pages: int
    total: int
    first: int  # the number of the page's first line across the whole list (1-based)


async def patient_visit_page(ctx: Context, patient_ids: list[int], page: int, per_page: int = 8) -> VisitPage:
    """A page of the patient's visits: those of the last 30 days and, beyond them, every older visit still open to
    an answer, newest first. A page past the end shows the last one."""
    now = ctx.clock.now()
    recent = await patient_visits(ctx, patient_ids)
    if patient_ids:
        async with ctx.uow(read_only=True) as uow:
            older = now - dt.timedelta(days=PATIENT_HISTORY_DAYS)
            rows = await uow.queries.patient_open_visit_lines(patient_ids, older)
        seen = {line.visit_id for line in recent}
        recent += [line for line in map(visit_line_of, rows) if line.visit_id not in seen]
    pages = max(1, -(-len(recent) // per_page))
    page = min(max(page, 0), pages - 1)
    shown = recent[page * per_page:(page + 1) * per_page]
    return VisitPage(shown, [answer_choices(line, now) for line in shown], page, pages, len(recent),
                     page * per_page + 1)


async def patient_visit_choice(ctx: Context, visit_id: int, patient_ids: list[int]) -> tuple[VisitLine,
                                                                                             tuple[bool, bool]]:
    """One of the patient's visits with what may be answered about it; NotFound for anyone else's visit."""
    line = await visit_line(ctx, visit_id)
    if line is None or line.patient_id not in patient_ids:
        raise NotFound(f"visit {visit_id} not found")
    return line, answer_choices(line, ctx.clock.now())


async def check_disputable(ctx: Context, visit_id: int, patient_ids: list[int]) -> VisitLine | None:
    """Before asking "you were NOT there, right?": the visit is the patient's and a dispute could be recorded now
    (IllegalTransition says why not). None when it is already disputed (nothing to ask)."""
    from core.services.visits import patient_visit

    async with ctx.uow(read_only=True) as uow:
        visit = await patient_visit(uow, visit_id, patient_ids)
    if replace(visit, pending_events=[]).dispute_by_patient(ctx.clock.now()) is None:
        return None
    return await visit_line(ctx, visit_id)


async def end_reason_wait_on_time(ctx: Context, visit_id: int, patient_ids: list[int], chat_id: int,
                                  message_id: int) -> None:
    """Queue the end of the wait for a reason, at the moment the service stops taking one: the message that asked for
    it (``message_id`` in ``chat_id``) is then edited to say so and loses «Skip», whether or not the patient writes
    again. Nothing is edited when a reason came in time (the renderer checks)."""
    async with ctx.uow() as uow:
        visit = await _patient_visit(uow, visit_id, patient_ids)
        if visit.state is not VisitState.PATIENT_DISPUTED or visit.answered_at is None:
            return
        number = await dispute_number(uow, visit_id)
        await uow.outbox.add(OutboxMessage(
            kind=OutboxKind.REASON_WAIT_END, recipient_kind=Recipient.PATIENT, recipient_id=visit.patient_id,
            visit_id=visit_id, due_at=visit.answered_at + reason_window(ctx.settings),
            payload={"chat_id": chat_id, "message_id": message_id, "disputed_at": visit.answered_at.isoformat()},
            dedupe_key=dispute_key("reason-wait-end", visit_id, number)), ctx.clock.now())
        await uow.commit()


async def _patient_visit(uow: UnitOfWork, visit_id: int, patient_ids: list[int]) -> Visit:
    from core.services.visits import patient_visit

    return await patient_visit(uow, visit_id, patient_ids)
