"""One-time codes: issue (only when the message carrying it is about to be sent), request, verify."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from core.channels import ChannelName
from core.clock import hour_start, seconds_to_next_hour
from core.codes import CodeOutcome, CodePolicy, generate_code, looks_like_code
from core.db.uow import UnitOfWork
from core.errors import Conflict, DomainError, IllegalTransition, InvalidValue
from core.model import Actor, OutboxKind, OutboxMessage, Recipient, VerificationMethod, VisitEvent, VisitState
from core.services import Context
from core.services.access import CLINIC_SYSTEM, Caller, check_visit
from core.services.channels import enabled_channels, patient_routes
from core.services.visits import RegisteredLate, evidence_refusal, window_end


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
        await uow.codes.put(visit_id, generation, ctx.hasher.digest(visit_id, generation, code), now, expires)
        await uow.visits.record_event(visit, VisitEvent(visit_id, now, "code_issued", visit.state, visit.state,
                                                           Actor.SCHEDULER, "code", f"generation {generation}"))
        await uow.commit()
    return IssuedCode(code, expires)


class PatientUnreachable(Conflict):
    """No channel can carry a code to this patient: queueing one would only tell the doctor a comforting lie."""
    code = "patient_unreachable"


class CodeRequestsCapped(DomainError):
    code = "code_requests_capped"


@dataclass(frozen=True)
class CodeRequest:
    message_id: int
    channel: str  # what will carry the code to the patient
    requests_left: int


async def request_code(ctx: Context, clinic_id: int, visit_id: int, *, caller: Caller = CLINIC_SYSTEM) -> CodeRequest:
    """The doctor asks for a code to be sent to the patient's chat. Queues it; the doctor never sees it.

    Refused, with nothing queued, when no chat can reach the patient (the doctor must fall back to face), and
    beyond ``code_requests_per_visit`` requests for the visit (a clinic cannot flood a patient with codes
    until one is read out by somebody else)."""
    now = ctx.clock.now()
    cap = ctx.settings.code_requests_per_visit
    async with ctx.uow() as uow:
        visit = check_visit(caller, await uow.visits.get(visit_id, clinic_id, lock=True))
        if visit.state is not VisitState.SCHEDULED:
            raise IllegalTransition(visit.id, visit.state.value, "send a code", "only a scheduled visit takes a code")
        refusal = evidence_refusal(ctx, visit, now, "send a code")
        if refusal is not None:
            raise refusal
        channel = await _channel(uow, visit.patient_id, enabled_channels(ctx.settings))
        if channel is None:
            raise PatientUnreachable(
                f"the patient of visit {visit_id} has no working channel (no chat with the Rastau bot, no WhatsApp "
                "or SMS that reaches them), so no code can reach them and none was queued; verify the patient by "
                "face (in person), or ask them to open the bot and share their phone number, then request the code "
                "again")
        taken = await uow.visits.take_code_request(visit_id, cap)
        if taken is None:
            raise CodeRequestsCapped(
                f"visit {visit_id} already had {cap} codes sent on request, the most allowed; each new code "
                "replaced the one before, so ask the patient to read out the latest, or verify by face (in person)")
        message_id = await uow.outbox.add(OutboxMessage(
            kind=OutboxKind.VISIT_CODE, recipient_kind=Recipient.PATIENT, recipient_id=visit.patient_id,
            visit_id=visit.id, due_at=now, payload={"reason": "requested"}), now)
        assert message_id is not None, "queued without a dedupe key, so never ignored"
        await uow.visits.record_event(visit, VisitEvent(visit_id, now, "code_requested", visit.state, visit.state,
                                                           Actor.DOCTOR, "code", f"request {taken} of {cap}"))
        await uow.commit()
    return CodeRequest(message_id, channel, cap - taken)


async def _channel(uow: UnitOfWork, patient_id: int, enabled: frozenset[ChannelName]) -> str | None:
    """The channel that will carry the code: the patient's first working one, as the sender picks it (issue 14:
    Telegram, WhatsApp or SMS), else none."""
    routes = await patient_routes(uow, await uow.patients.get(patient_id), enabled)
    return routes[0].channel.value if routes else None


@dataclass(frozen=True)
class CodeCheck:
    outcome: CodeOutcome
    attempts_left: int
    capped_by: str | None = None  # "doctor" or "clinic": an hourly cap on wrong codes stopped the check
    retry_after: int | None = None  # with capped_by: seconds until the cap's hour turns


async def verify_code(ctx: Context, clinic_id: int, visit_id: int, code: str,
                      actor: Actor = Actor.DOCTOR, *, caller: Caller = CLINIC_SYSTEM) -> CodeCheck:
    """Check the 6 digits the patient read out. Every attempt is counted atomically; after
    ``max_attempts`` the visit's code is locked; hourly caps on wrong codes per doctor and per clinic stop
    guessing spread over visits and doctors. A capped check is refused before the code is compared."""
    code = (code or "").strip()
    if not looks_like_code(code):
        raise InvalidValue("a visit code is exactly 6 digits")
    now = ctx.clock.now()
    policy = ctx.settings.code_policy
    async with ctx.uow() as uow:
        # Counting first takes the visit's row lock; every refusal below leaves without a commit, so uncounted.
        hour = hour_start(now)
        visit, attempts, state = await uow.visits.count_code_attempt(visit_id, clinic_id, hour)
        visit = check_visit(caller, visit)
        row = state.code
        if visit.state is not VisitState.SCHEDULED:
            if row is not None and row.used_at is not None:
                return CodeCheck(CodeOutcome.ALREADY_USED, 0)
            raise IllegalTransition(visit.id, visit.state.value, "verify by code")
        if visit.registered_late:  # no code was ever sent for it: refused before it could count as a guess
            raise RegisteredLate(visit, "verify by code")
        if state.doctor_failures >= policy.doctor_failures_per_hour:
            return _capped(policy, attempts - 1, "doctor", now)
        if state.clinic_failures >= policy.clinic_failures_per_hour:
            return _capped(policy, attempts - 1, "clinic", now)
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
            visit.verify(VerificationMethod.CODE, actor, now)
            await uow.visits.save(visit, code_used_at=now)
        elif outcome in (CodeOutcome.WRONG, CodeOutcome.NO_CODE):
            # Each cap's slot is taken by a conditional UPDATE: concurrent guesses (on any number of server
            # processes) never pass a cap. One taken meanwhile by another guess ends this check capped, and leaving
            # without a commit keeps nothing of it; the answer does not say whether the code was right.
            if not await uow.codes.take_clinic_failure(clinic_id, hour, policy.clinic_failures_per_hour):
                return _capped(policy, attempts - 1, "clinic", now)
            if not await uow.codes.take_doctor_failure(visit.doctor_id, hour, policy.doctor_failures_per_hour):
                return _capped(policy, attempts - 1, "doctor", now)
        await uow.commit()
    return CodeCheck(outcome, left)


def _capped(policy: CodePolicy, attempts: int, by: str, now: dt.datetime) -> CodeCheck:
    return CodeCheck(CodeOutcome.LOCKED, max(policy.max_attempts - attempts, 0), capped_by=by,
                     retry_after=seconds_to_next_hour(now))


CODE_RESEND_ASK_WITHIN = dt.timedelta(minutes=15)


async def recent_code_sent_at(ctx: Context, visit_id: int,
                              within: dt.timedelta = CODE_RESEND_ASK_WITHIN) -> dt.datetime | None:
    """When the visit's latest code message went out, if within ``within`` of now (one still queued counts as
    sent now); None otherwise. A doctor asking again so soon is asked first: the patient may simply not have
    looked yet, and a new code makes the one they are reading out stop working."""
    now = ctx.clock.now()
    async with ctx.uow(read_only=True) as uow:
        rows = await uow.queries.sent_code_messages(visit_id)
    times = [r.sent_at if r.status == "sent" else now for r in rows
             if (r.status == "sent" and r.sent_at is not None) or (r.status in ("pending", "sending")
                                                                  and r.due_at <= now)]
    latest = max(times, default=None)
    return latest if latest is not None and now - latest <= within else None
