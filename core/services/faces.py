"""In-person face verification: the rules around a decision the server's face pipeline makes.

The frame itself never reaches this module; only the encoding made from it (already without the image),
which is compared with the patient's decrypted references and then dropped.

Every attempt is reserved before the image is read: one place on the visit's round of 5 and one on each hourly cap
(patient, doctor, clinic), in one transaction of conditional updates, so concurrent frames on any number of server
processes count exactly and nothing is analysed past a cap. A match gives the hourly places back (it is no failure);
so does an attempt that produced no decision (the frame never arrived, the decoder refused it, a worker crashed):
no face was compared, so nothing was learnt.
"""
from __future__ import annotations

import datetime as dt
import enum
import math
from dataclasses import dataclass
from typing import ClassVar

from core.clock import hour_start, seconds_to_next_hour
from core.db.uow import UnitOfWork
from core.errors import DomainError, IllegalTransition
from core.model import FRESH_REFERENCE, Actor, VerificationMethod, VisitEvent, VisitMode, VisitState
from core.services import Context
from core.services.access import CLINIC_SYSTEM, Caller, check_visit
from core.services.chat import reachable_chat
from core.services.face_keys import open_references
from core.services.patient_changes import CONSENT_RECORDED, CONSENT_WITHDRAWN
from core.services.visits import evidence_refusal

FACE_FAILURES_BEFORE_LOCK = 5
FACE_BASE_LOCK = dt.timedelta(seconds=30)
# A reference younger than this, for a patient with no chat to hear of its enrolment, makes a match suspect.
FRESH_REFERENCE_AGE = dt.timedelta(hours=24)
SCOPES = ("patient", "doctor", "clinic")  # the hourly caps, in the order their rows are locked


class FaceDecision(str, enum.Enum):
    MATCH = "match"
    NO_MATCH = "no_match"
    NO_FACE = "no_face"
    MULTIPLE_FACES = "multiple_faces"
    NOT_LIVE = "not_live"  # a capture session whose head-turn challenge was not followed (face_live only)


class NotEnrolled(DomainError):
    code = "not_enrolled"


class NoReference(NotEnrolled):
    """The patient withdrew consent to face recognition (/withdraw): their references were destroyed."""
    code = "no_reference"


async def not_enrolled(uow: UnitOfWork, patient_id: int, visit_id: int) -> NotEnrolled:
    """Why a visit's patient has no face to compare with: never enrolled, or withdrawn by the patient."""
    withdrawn = await uow.patient_changes.last_at(patient_id, CONSENT_WITHDRAWN)
    consented = await uow.patient_changes.last_at(patient_id, CONSENT_RECORDED)
    if withdrawn is not None and (consented is None or consented <= withdrawn):
        return NoReference(f"the patient of visit {visit_id} withdrew consent to face recognition and their face "
                           "references were destroyed; verify with the one-time code")
    return NotEnrolled(f"patient of visit {visit_id} has no enrolled face; verify with the one-time code")


class FaceLocked(DomainError):
    code = "face_attempts_locked"

    def __init__(self, visit_id: int, retry_after: int):
        super().__init__(f"too many failed face attempts for visit {visit_id}; try again in {retry_after} s "
                         "or verify with the patient's one-time code")
        self.retry_after = retry_after


class FaceCapped(FaceLocked):
    """An hourly cap on failed face checks: per patient (over all their visits), per doctor or per clinic."""

    WHO: ClassVar[dict[str, str]] = {"patient": "this patient's face checks have",
                                     "doctor": "this doctor's face checks have",
                                     "clinic": "this clinic's face checks have"}

    def __init__(self, scope: str, retry_after: int):
        DomainError.__init__(self, f"{self.WHO[scope]} failed too often this hour; face checks resume in "
                                   f"{retry_after} s; verify with the patient's one-time code meanwhile")
        self.code, self.scope, self.retry_after = f"{scope}_face_cap", scope, retry_after


def _lock_for(lockouts: int) -> dt.timedelta:
    """30 s after the first 5 failures, doubling on every further lockout, capped at one hour."""
    return min(FACE_BASE_LOCK * (1 << max(lockouts - 1, 0)), dt.timedelta(hours=1))


@dataclass(frozen=True)
class FaceAttempt:
    """A reserved attempt: what it was counted against, and in which clock hour."""
    visit_id: int
    clinic_id: int
    subjects: dict[str, int]  # scope -> patient, doctor or clinic id
    hour: dt.datetime


def _caps(ctx: Context) -> dict[str, int]:
    s = ctx.settings
    return {"patient": s.patient_face_failures_per_hour, "doctor": s.doctor_face_failures_per_hour,
            "clinic": s.clinic_face_failures_per_hour}


async def reserve_face_attempt(ctx: Context, clinic_id: int, visit_id: int, *,
                               caller: Caller = CLINIC_SYSTEM) -> FaceAttempt:
    """Refuse before any image work (online, closed, outside its window, registered late, not enrolled, locked,
    capped), else count the attempt now, before the frame is even read."""
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        visit = check_visit(caller, await uow.visits.get(visit_id, clinic_id))
        if visit.mode is VisitMode.ONLINE:
            raise IllegalTransition(visit.id, visit.state.value, "verify by face",
                                    "online consultations are verified by one-time code only")
        if visit.state is not VisitState.SCHEDULED:
            raise IllegalTransition(visit.id, visit.state.value, "verify by face",
                                    "only a scheduled visit can be verified")
        refusal = evidence_refusal(ctx, visit, now, "verify by face")
        if refusal is not None:
            raise refusal
        if not await uow.templates.active(visit.patient_id):
            raise await not_enrolled(uow, visit.patient_id, visit_id)
        if not await uow.visits.take_face_attempt(visit_id, FACE_FAILURES_BEFORE_LOCK, now):
            _, lockouts, retry_at = await uow.visits.face_counters(visit_id)
            wait = (retry_at - now).total_seconds() if retry_at is not None else \
                _lock_for(lockouts + 1).total_seconds()  # the round is full; its last frames are being analysed
            raise FaceLocked(visit_id, max(1, math.ceil(wait)))
        attempt = FaceAttempt(visit_id, clinic_id, {"patient": visit.patient_id, "doctor": visit.doctor_id,
                                                    "clinic": clinic_id}, hour_start(now))
        caps = _caps(ctx)
        for scope in SCOPES:
            if not await uow.face_failures.take(scope, attempt.subjects[scope], attempt.hour, caps[scope]):
                raise FaceCapped(scope, seconds_to_next_hour(now))  # no commit: nothing of this attempt is kept
        await uow.commit()
    return attempt


async def release_face_attempt(ctx: Context, attempt: FaceAttempt) -> None:
    """Give back an attempt that produced no decision."""
    async with ctx.uow() as uow:
        await uow.visits.get(attempt.visit_id, lock=True)  # the visit row first: the order reservations lock in
        await uow.visits.give_back_face_attempt(attempt.visit_id)
        await _give_back_hourly(uow, attempt)
        await uow.commit()


async def _give_back_hourly(uow: UnitOfWork, attempt: FaceAttempt) -> None:
    for scope in SCOPES:
        await uow.face_failures.give_back(scope, attempt.subjects[scope], attempt.hour)


@dataclass(frozen=True)
class FaceResult:
    decision: FaceDecision
    retry_after: int | None = None  # set when this failure started a lockout


async def record_face_attempt(ctx: Context, attempt: FaceAttempt, analysis_outcome: str,
                              encoding: tuple[float, ...] | None, *,
                              method: VerificationMethod = VerificationMethod.FACE,
                              reason: str | None = None) -> FaceResult:
    """Decide match/no_match against every active reference and settle the reserved attempt: a match verifies the
    visit (naming the enrolment it matched) and is not counted; a failure stays counted and, when it fills the
    visit's round, locks face checks for the visit. ``method`` is the evidence a match makes (``face_live`` for a
    capture session); ``reason`` says why a capture was not live, in the failure's event."""
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        visit = await uow.visits.get(attempt.visit_id, attempt.clinic_id, lock=True)
        assert visit.id is not None, "a visit read from storage"
        matched = None
        if analysis_outcome == "ok" and encoding is not None:
            refs = await open_references(ctx, visit.patient_id, await uow.templates.active_references(visit.patient_id))
            if not refs:
                raise await not_enrolled(uow, visit.patient_id, visit.id)
            distance, matched = min(((math.dist(encoding, ref.encoding), ref.reference) for ref in refs),
                                    key=lambda pair: pair[0])
            decision = FaceDecision.MATCH if distance <= ctx.settings.face_threshold else FaceDecision.NO_MATCH
        else:
            decision = FaceDecision(analysis_outcome)
        retry_after = None
        if decision is FaceDecision.MATCH:
            await _give_back_hourly(uow, attempt)
            assert matched is not None, "a match names the reference it matched"
            if visit.state is VisitState.SCHEDULED:
                patient = await uow.patients.get(visit.patient_id)
                fresh = now - matched.enrolled_at < FRESH_REFERENCE_AGE and await reachable_chat(uow, patient) is None
                visit.verify(method, Actor.CLINIC_SYSTEM, now, FRESH_REFERENCE if fresh else None)
                visit.verified_enrolment_id = matched.enrolment_id
                await uow.visits.save(visit)
            elif visit.verified_by is None:  # closed or cancelled while the frame was being analysed
                raise IllegalTransition(visit.id, visit.state.value, "verify by face",
                                        "only a scheduled visit can be verified")
            # else a concurrent frame or code verified it first: the match stands, nothing changes
        else:
            failures, lockouts, retry_at = await uow.visits.face_counters(visit.id)
            if failures >= FACE_FAILURES_BEFORE_LOCK and retry_at is None:
                lockouts += 1
                lock = _lock_for(lockouts)
                await uow.visits.lock_face(visit.id, lockouts, now + lock)
                retry_after = int(lock.total_seconds())
            await uow.visits.record_event(visit, VisitEvent(visit.id, now, "face_attempt", visit.state,
                                                               visit.state, Actor.CLINIC_SYSTEM, method.value,
                                                               f"{decision.value}:{reason}" if reason else
                                                               decision.value))
        await uow.commit()
    return FaceResult(decision, retry_after)
