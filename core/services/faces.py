"""In-person face verification: the rules around a decision the server's face pipeline makes.

The frame itself never reaches this module; only the encoding made from it (already without the image),
which is compared with the patient's decrypted references and then dropped.
"""
from __future__ import annotations

import datetime as dt
import enum
import math
from dataclasses import dataclass

from core.errors import DomainError, IllegalTransition
from core.model import Actor, VerificationMethod, VisitEvent, VisitMode, VisitState
from core.services import Context

FACE_FAILURES_BEFORE_LOCK = 5
FACE_BASE_LOCK = dt.timedelta(seconds=30)


class FaceDecision(str, enum.Enum):
    MATCH = "match"
    NO_MATCH = "no_match"
    NO_FACE = "no_face"
    MULTIPLE_FACES = "multiple_faces"


class NotEnrolled(DomainError):
    code = "not_enrolled"


class FaceLocked(DomainError):
    code = "face_attempts_locked"

    def __init__(self, visit_id: int, retry_after: int):
        super().__init__(f"too many failed face attempts for visit {visit_id}; try again in {retry_after} s "
                         "or verify with the patient's one-time code")
        self.retry_after = retry_after


def best_distance(encoding, references) -> float:
    return min(math.dist(encoding, ref) for ref in references)


def _lock_for(lockouts: int) -> dt.timedelta:
    """30 s after the first 5 failures, doubling on every further lockout, capped at one hour."""
    return min(FACE_BASE_LOCK * (2 ** max(lockouts - 1, 0)), dt.timedelta(hours=1))


async def check_face_allowed(ctx: Context, clinic_id: int, visit_id: int) -> int:
    """Refuse before any image work: online visits, closed visits, locked visits, patients not enrolled.
    Returns the patient id whose references the frame will be compared against."""
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        visit = await uow.visits.get(visit_id, clinic_id)
        if visit.mode is VisitMode.ONLINE:
            raise IllegalTransition(visit.id, visit.state.value, "verify by face",
                                    "online consultations are verified by one-time code only")
        if visit.state is not VisitState.SCHEDULED:
            raise IllegalTransition(visit.id, visit.state.value, "verify by face",
                                    "only a scheduled visit can be verified")
        _, _, retry_at = await uow.visits.face_counters(visit_id)
        if retry_at is not None and retry_at > now:
            raise FaceLocked(visit_id, max(1, math.ceil((retry_at - now).total_seconds())))
        if not await uow.templates.active(visit.patient_id):
            raise NotEnrolled(f"patient of visit {visit_id} has no enrolled face; verify with the one-time code")
        return visit.patient_id


@dataclass(frozen=True)
class FaceResult:
    decision: FaceDecision
    retry_after: int | None = None  # set when this failure started a lockout


async def record_face_attempt(ctx: Context, clinic_id: int, visit_id: int, analysis_outcome: str,
                              encoding: tuple[float, ...] | None) -> FaceResult:
    """Decide match/no_match against every active reference and record the outcome on the visit."""
    now = ctx.clock.now()
    threshold = ctx.settings.face_threshold
    async with ctx.uow() as uow:
        visit = await uow.visits.get(visit_id, clinic_id, lock=True)
        if analysis_outcome == "ok" and encoding is not None:
            refs = [ctx.cipher.open(visit.patient_id, blob) for blob in await uow.templates.active(visit.patient_id)]
            if not refs:
                raise NotEnrolled(f"patient of visit {visit_id} has no enrolled face")
            decision = FaceDecision.MATCH if best_distance(encoding, refs) <= threshold else FaceDecision.NO_MATCH
            del refs
        else:
            decision = FaceDecision(analysis_outcome)
        failures, lockouts, _ = await uow.visits.face_counters(visit_id)
        retry_after = None
        if decision is FaceDecision.MATCH:
            visit.verify(VerificationMethod.FACE, Actor.CLINIC_SYSTEM, now)
            await uow.visits.save(visit)
            await uow.visits.set_face_counters(visit_id, 0, lockouts, None)
        else:
            failures += 1
            retry_at = None
            if failures >= FACE_FAILURES_BEFORE_LOCK:
                lockouts += 1
                lock = _lock_for(lockouts)
                retry_at, failures, retry_after = now + lock, 0, int(lock.total_seconds())
            await uow.visits.set_face_counters(visit_id, failures, lockouts, retry_at)
            await uow.visits.record_event(visit_id, VisitEvent(visit_id, now, "face_attempt", visit.state,
                                                               visit.state, Actor.CLINIC_SYSTEM, "face",
                                                               decision.value))
        await uow.commit()
    return FaceResult(decision, retry_after)
