"""Visit lifecycle: registration (with its scheduled chat messages), cancellation, closing windows,
and the patient's own answer ("I was there" / "I wasn't there")."""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from core.clock import to_local
from core.db.uow import UnitOfWork
from core.errors import IllegalTransition, NotFound
from core.model import (
    Actor,
    OutboxKind,
    OutboxMessage,
    OutboxStatus,
    Recipient,
    Visit,
    VisitEvent,
    VisitMode,
    VisitState,
    ensure_utc,
)
from core.services import Context
from core.services.access import CLINIC_SYSTEM, Caller, check_doctor, check_visit
from core.services.alerts import tell_watchers
from core.services.dispute_answers import (
    Audience,
    chat_mark,
    check_reason_welcome,
    dispute_audience,
    dispute_key,
    dispute_number,
)
from core.services.idempotency import IdempotentWrite


def window_end(visit: Visit, ctx: Context) -> dt.datetime:
    """After this moment an unverified visit is closed as unverified."""
    return visit.end + ctx.settings.visit_grace


class OutsideWindow(IllegalTransition):
    code = "outside_window"


class RegisteredLate(IllegalTransition):
    code = "registered_late"

    def __init__(self, visit: Visit, step: str):
        super().__init__(visit.id, visit.state.value, step, "it was registered after its verification window had "
                         "closed, so it can collect no evidence (the patient is still asked whether it happened)")


def evidence_refusal(ctx: Context, visit: Visit, now: dt.datetime, step: str) -> IllegalTransition | None:
    """Why no evidence (a face frame, a code sent) may be collected for the visit now, or None when it may: one rule
    for faces and codes. Evidence belongs to its visit's window, from ``code_issue_lead_minutes`` before the start
    until the window ends, so one presence (or one replayed photo) cannot verify visits long past or far ahead;
    a visit registered after its window had closed has no window at all."""
    if visit.registered_late:
        return RegisteredLate(visit, step)
    closes = window_end(visit, ctx)
    if ctx.settings.code_policy.can_issue(now, visit.start, closes):
        return None
    lead = ctx.settings.code_issue_lead_minutes
    opens = to_local(visit.start - dt.timedelta(minutes=lead))
    return OutsideWindow(visit.id, visit.state.value, step, f"evidence for a visit is taken from {lead} minutes before "
                         f"the start until its window ends, here {opens:%Y-%m-%d %H:%M} to "
                         f"{to_local(closes):%Y-%m-%d %H:%M} Asia/Almaty")


async def register_visit(ctx: Context, *, clinic_id: int, doctor_id: int, patient_id: int, start: dt.datetime,
                         duration: dt.timedelta, mode: VisitMode | str, service_code: str,
                         actor: Actor = Actor.CLINIC_SYSTEM, idempotency: IdempotentWrite | None = None,
                         caller: Caller = CLINIC_SYSTEM) -> Visit:
    """Create a scheduled visit and queue its messages: the code before an in-person visit and,
    for every visit, the "were you there?" prompt after it. A visit registered after its window had closed is
    accepted and marked ``registered_late``: it can collect no evidence, so no code goes out for it, but the patient
    is still asked. ``idempotency`` (an :class:`core.services.idempotency.IdempotentWrite`) stores the response in
    the same transaction."""
    check_doctor(caller, doctor_id)
    now = ctx.clock.now()
    visit = Visit(id=None, clinic_id=clinic_id, doctor_id=doctor_id, patient_id=patient_id,
                  start=ensure_utc(start, "visit start"), duration=duration, mode=VisitMode(mode),
                  service_code=(service_code or "").strip())
    visit.registered_late = now > window_end(visit, ctx)
    settings = ctx.settings
    async with ctx.uow() as uow:
        await uow.doctors.get(doctor_id, clinic_id)
        await uow.patients.get(patient_id, clinic_id)
        await uow.visits.add(visit, now)
        visit.pending_events.append(VisitEvent(visit.id, now, "register", None, VisitState.SCHEDULED, actor,
                                               detail="registered_late" if visit.registered_late else None))
        await uow.visits.save(visit)
        if visit.mode is VisitMode.IN_PERSON and not visit.registered_late:
            await uow.outbox.add(OutboxMessage(
                kind=OutboxKind.VISIT_CODE, recipient_kind=Recipient.PATIENT, recipient_id=patient_id,
                visit_id=visit.id,
                due_at=max(now, visit.start - dt.timedelta(minutes=settings.code_send_lead_minutes)),
                payload={"reason": "scheduled"}, dedupe_key=f"code:{visit.id}:scheduled"), now)
        if visit.registered_late:
            await queue_late_prompt(uow, ctx, visit, now)
        else:
            await uow.outbox.add(OutboxMessage(
                kind=OutboxKind.ATTENDANCE_PROMPT, recipient_kind=Recipient.PATIENT, recipient_id=patient_id,
                visit_id=visit.id,
                due_at=visit.end + dt.timedelta(minutes=settings.prompt_delay_minutes), payload={},
                dedupe_key=f"prompt:{visit.id}"), now)
        if idempotency is not None:
            await idempotency.store(uow, visit, now)
        await uow.commit()
    return visit


async def queue_late_prompt(uow: UnitOfWork, ctx: Context, visit: Visit, now: dt.datetime) -> None:
    """A backdated visit's "were you there?" joins the patient's question that is still gathering such visits, or
    starts one due ``late_prompt_gather_minutes`` from now: a clinic registering a week of past visits at once sends
    the patient one message listing them, not one each. The outbox row is still the one record of what is sent."""
    assert visit.id is not None, "a visit is added before its prompt is queued"
    batch = await uow.outbox.open_prompt_batch(visit.patient_id, now)
    if batch is not None:
        visits = [int(v) for v in json.loads(batch.payload).get("visits", [])]
        if await uow.outbox.extend_prompt_batch(batch.id, [*visits, visit.id], now):
            return
    due = max(now + dt.timedelta(minutes=ctx.settings.late_prompt_gather_minutes),
              visit.end + dt.timedelta(minutes=ctx.settings.prompt_delay_minutes))
    await uow.outbox.add(OutboxMessage(
        kind=OutboxKind.ATTENDANCE_PROMPT, recipient_kind=Recipient.PATIENT, recipient_id=visit.patient_id,
        visit_id=visit.id, due_at=due, payload={"visits": [visit.id]}, dedupe_key=f"prompt:{visit.id}"), now)


async def cancel_visit(ctx: Context, clinic_id: int, visit_id: int, reason: str | None = None,
                       actor: Actor = Actor.CLINIC_SYSTEM, *, caller: Caller = CLINIC_SYSTEM) -> Visit:
    async with ctx.uow() as uow:
        visit = check_visit(caller, await uow.visits.get(visit_id, clinic_id, lock=True))
        visit.cancel(actor, ctx.clock.now(), reason)
        await uow.visits.save(visit)
        if any(r.status == OutboxStatus.SENT.value for r in await uow.queries.sent_code_messages(visit_id)):
            # the patient holds a code for it: say the visit is off and mark the code messages void
            await uow.outbox.add(OutboxMessage(
                kind=OutboxKind.VISIT_CANCELLED, recipient_kind=Recipient.PATIENT, recipient_id=visit.patient_id,
                visit_id=visit.id, due_at=ctx.clock.now(), payload={}, dedupe_key=f"visit_cancelled:{visit.id}"),
                ctx.clock.now())
        await uow.commit()
    return visit


@dataclass(frozen=True)
class VisitView:
    visit: Visit
    events: list[VisitEvent]


async def get_visit(ctx: Context, clinic_id: int, visit_id: int, *, caller: Caller = CLINIC_SYSTEM) -> VisitView:
    async with ctx.uow() as uow:
        visit = check_visit(caller, await uow.visits.get(visit_id, clinic_id))
        return VisitView(visit, await uow.visits.events(visit_id))


async def list_visits(ctx: Context, clinic_id: int, *, start_from: dt.datetime, start_to: dt.datetime,
                      doctor_id: int | None = None, state: VisitState | None = None, limit: int = 500,
                      offset: int = 0, caller: Caller = CLINIC_SYSTEM) -> list[Visit]:
    """The clinic's visits starting in [start_from, start_to); another doctor's, asked for by a bound caller: none."""
    if doctor_id is not None and not caller.sees_doctor(doctor_id):
        return []
    doctor_id = caller.doctor_id if caller.doctor_id is not None else doctor_id
    async with ctx.uow() as uow:
        return await uow.visits.list(clinic_id=clinic_id, start_from=start_from, start_to=start_to,
                                     doctor_id=doctor_id, state=state, limit=limit, offset=offset)


async def close_expired_windows(ctx: Context, limit: int = 500) -> int:
    """Mark scheduled visits whose window has closed as unverified. Returns how many were closed."""
    now = ctx.clock.now()
    cutoff = now - ctx.settings.visit_grace
    closed = 0
    async with ctx.uow() as uow:
        for visit_id in await uow.visits.scheduled_ending_before(cutoff, limit):
            visit = await uow.visits.get(visit_id, lock=True)
            if visit.state is VisitState.SCHEDULED:
                visit.close_unverified(now)
                await uow.visits.save(visit)
                closed += 1
        await uow.commit()
    return closed


@dataclass(frozen=True)
class AnswerResult:
    visit: Visit
    changed: bool
    told: Audience | None = None  # who really heard of a dispute (None for "yes")


async def patient_visit(uow: UnitOfWork, visit_id: int, patient_ids: list[int]) -> Visit:
    """Load a visit for a patient, answering NotFound for anyone else's visit."""
    visit = await uow.visits.get(visit_id, lock=True)
    if visit.patient_id not in patient_ids:
        raise NotFound(f"visit {visit_id} not found")  # another patient's visit: do not reveal it exists
    return visit


async def patient_confirms(ctx: Context, visit_id: int, patient_ids: list[int]) -> AnswerResult:
    """"Yes, I was there". On a verified visit it confirms; on an unverified one it is kept as a claim."""
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        visit = await patient_visit(uow, visit_id, patient_ids)
        if visit.state is VisitState.UNVERIFIED:
            event = visit.claim_attended_unverified(now)
        else:
            event = visit.confirm_by_patient(now)
        await uow.visits.save(visit)
        await uow.commit()
    return AnswerResult(visit, event is not None)


async def patient_disputes(ctx: Context, visit_id: int, patient_ids: list[int],
                           reason: str | None = None, *, chat_id: int | None = None) -> AnswerResult:
    """"I wasn't there": record the dispute and tell the clinic's admins and its auditors at once."""
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        visit = await patient_visit(uow, visit_id, patient_ids)
        via = chat_mark(ctx.settings, chat_id) if chat_id is not None else None  # only this chat may take it back
        event = visit.dispute_by_patient(now, reason, via=via)
        await uow.visits.save(visit)
        if event is not None:
            number = await dispute_number(uow, visit.id)  # a dispute again after a take-back is heard again
            await tell_watchers(uow, ctx.settings, clinic_id=visit.clinic_id, kind=OutboxKind.DISPUTE_NOTICE,
                                key=dispute_key("dispute", visit.id, number), now=now, visit_id=visit.id,
                                event=("visit.disputed", dispute_data(visit)))
        told = await dispute_audience(uow, ctx.settings, visit.clinic_id)
        await uow.commit()
    return AnswerResult(visit, event is not None, told)


def dispute_data(visit: Visit) -> dict[str, object]:
    """What the payer's webhook hears of a dispute: the visit as billed, its evidence and the patient's words."""
    return {"visit_id": visit.id, "clinic_id": visit.clinic_id, "doctor_id": visit.doctor_id,
            "patient_id": visit.patient_id, "start": visit.start.isoformat(), "mode": visit.mode.value,
            "service_code": visit.service_code, "verified_by": visit.verified_by.value if visit.verified_by else None,
            "verified_at": visit.verified_at.isoformat() if visit.verified_at else None,
            "disputed_at": visit.answered_at.isoformat() if visit.answered_at else None, "reason": visit.dispute_reason}


async def explain_dispute(ctx: Context, visit_id: int, patient_ids: list[int], reason: str) -> AnswerResult:
    """Store the patient's free-text reason for "I wasn't there" and pass it on to the clinic's admins and the
    auditors watching it, who already got the dispute itself at once. Taken only within ``dispute_reason_minutes``
    of the dispute (:class:`core.services.dispute_answers.ReasonTooLate` after)."""
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        visit = await patient_visit(uow, visit_id, patient_ids)
        check_reason_welcome(ctx.settings, visit, now)
        visit.add_dispute_reason(reason, now)
        await uow.visits.save(visit)
        if visit.dispute_reason:
            number = await dispute_number(uow, visit.id)
            await tell_watchers(uow, ctx.settings, clinic_id=visit.clinic_id, kind=OutboxKind.DISPUTE_NOTICE,
                                key=dispute_key("dispute-reason", visit.id, number), now=now, visit_id=visit.id,
                                payload={"update": "reason"}, event=("visit.dispute_reason", dispute_data(visit)))
        told = await dispute_audience(uow, ctx.settings, visit.clinic_id)
        await uow.commit()
    return AnswerResult(visit, True, told)
