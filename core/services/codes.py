"""One-time codes: issue (only when the message carrying it is about to be sent), request, verify."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from core.clock import hour_start
from core.codes import CodeOutcome, CodePolicy, generate_code, looks_like_code
from core.errors import IllegalTransition, InvalidValue, NotFound
from core.model import Actor, OutboxMessage, VerificationMethod, VisitEvent, VisitState
from core.services import Context
from core.services.visits import KIND_VISIT_CODE, RegisteredLate, evidence_refusal, window_end


@dataclass(frozen=True)
class IssuedCode:
    code: str
    expires_at: dt.datetime


async def issue_code(ctx: Context, visit_id: int) -> IssuedCode | None:
    """Make a fresh code for the visit and store only its HMAC; the previous code stops working.

    Returns None when no code may be issued now (visit not scheduled, or outside its window). Called by the
    dispatcher just before sending, so the plain code never rests in the database or the outbox.
    """
    now = ctx.clock.now()
    policy = ctx.settings.code_policy
    async with ctx.uow() as uow:
        visit = await uow.visits.get(visit_id, lock=True)
        if visit.state is not VisitState.SCHEDULED or evidence_refusal(ctx, visit, now, "issue a code"):
            return None
        end = window_end(visit, ctx)
        code = generate_code()
        generation = await uow.codes.next_generation(visit_id)
        expires = policy.expiry(now, end)
        await uow.codes.put(visit_id, ctx.hasher.digest(visit_id, generation, code), now, expires)
        await uow.visits.record_event(visit_id, VisitEvent(visit_id, now, "code_issued", visit.state, visit.state,
                                                           Actor.SCHEDULER, "code", f"generation {generation}"))
        await uow.commit()
    return IssuedCode(code, expires)


async def request_code(ctx: Context, clinic_id: int, visit_id: int, doctor_id: int | None = None) -> int:
    """The doctor asks for a code to be sent to the patient's chat. Queues it; the doctor never sees it."""
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        visit = await uow.visits.get(visit_id, clinic_id, lock=True)
        if doctor_id is not None and visit.doctor_id != doctor_id:
            raise NotFound(f"visit {visit_id} not found")
        if visit.state is not VisitState.SCHEDULED:
            raise IllegalTransition(visit.id, visit.state.value, "send a code", "only a scheduled visit takes a code")
        refusal = evidence_refusal(ctx, visit, now, "send a code")
        if refusal is not None:
            raise refusal
        message_id = await uow.outbox.add(OutboxMessage(
            kind=KIND_VISIT_CODE, recipient_kind="patient", recipient_id=visit.patient_id, visit_id=visit.id,
            due_at=now, payload={"reason": "requested"}), now)
        await uow.visits.record_event(visit_id, VisitEvent(visit_id, now, "code_requested", visit.state, visit.state,
                                                           Actor.DOCTOR, "code"))
        await uow.commit()
    return message_id


@dataclass(frozen=True)
class CodeCheck:
    outcome: CodeOutcome
    attempts_left: int
    capped_by: str | None = None  # "doctor" or "clinic": an hourly cap on wrong codes stopped the check


async def verify_code(ctx: Context, clinic_id: int, visit_id: int, code: str,
                      actor: Actor = Actor.DOCTOR) -> CodeCheck:
    """Check the 6 digits the patient read out. Every attempt is counted atomically; after
    ``max_attempts`` the visit's code is locked; hourly caps on wrong codes per doctor and per clinic stop
    guessing spread over visits and doctors. A capped check is refused before the code is compared."""
    code = (code or "").strip()
    if not looks_like_code(code):
        raise InvalidValue("a visit code is exactly 6 digits")
    now = ctx.clock.now()
    policy = ctx.settings.code_policy
    async with ctx.uow() as uow:
        visit = await uow.visits.get(visit_id, clinic_id)
        if uow.row_locks:  # doctor first, then visit: one lock order, no deadlocks (SQLite holds the write lock)
            await uow.doctors.lock(visit.doctor_id)
            visit = await uow.visits.get(visit_id, clinic_id, lock=True)
        row = await uow.codes.current(visit_id)
        if visit.state is not VisitState.SCHEDULED:
            if row is not None and row.used_at is not None:
                return CodeCheck(CodeOutcome.ALREADY_USED, 0)
            raise IllegalTransition(visit.id, visit.state.value, "verify by code")
        if visit.registered_late:  # no code was ever sent for it: refused before it could count as a guess
            raise RegisteredLate(visit, "verify by code")
        hour = hour_start(now)
        if await uow.codes.doctor_failures(visit.doctor_id, hour) >= policy.doctor_failures_per_hour:
            return _capped(policy, await uow.visits.code_attempts(visit_id), "doctor")
        if await uow.codes.clinic_failures(clinic_id, hour) >= policy.clinic_failures_per_hour:
            return _capped(policy, await uow.visits.code_attempts(visit_id), "clinic")
        attempts = await uow.visits.bump_code_attempts(visit_id)
        left = max(policy.max_attempts - attempts, 0)
        if attempts > policy.max_attempts:
            outcome = CodeOutcome.LOCKED
        elif row is None:
            outcome = CodeOutcome.NO_CODE
        elif now > row.expires_at:
            outcome = CodeOutcome.EXPIRED
        elif not ctx.hasher.matches(visit_id, row.generation, code, row.code_hash):
            outcome = CodeOutcome.WRONG
        else:
            outcome = CodeOutcome.VERIFIED
        if outcome is CodeOutcome.VERIFIED:
            await uow.codes.mark_used(visit_id, now)
            visit.verify(VerificationMethod.CODE, actor, now)
            await uow.visits.save(visit)
        elif outcome in (CodeOutcome.WRONG, CodeOutcome.NO_CODE):
            if not await uow.codes.take_clinic_failure(clinic_id, hour, policy.clinic_failures_per_hour):
                # another doctor's guess took the clinic's last slot meanwhile: leaving without a commit
                # keeps nothing of this attempt, and the answer does not say whether the code was right
                return _capped(policy, attempts - 1, "clinic")
            await uow.codes.add_doctor_failure(visit.doctor_id, hour)
        await uow.commit()
    return CodeCheck(outcome, left)


def _capped(policy: CodePolicy, attempts: int, by: str) -> CodeCheck:
    return CodeCheck(CodeOutcome.LOCKED, max(policy.max_attempts - attempts, 0), capped_by=by)
