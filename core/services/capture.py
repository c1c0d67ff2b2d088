"""Capture sessions: an in-person visit's face evidence taken on Rastau's own webcam page, live.

The clinic's system opens a session for one visit and gets a one-time URL; the doctor's browser opens it within
two minutes, once: the page streams frames to the server, which reads each one's head pose in the face workers and
decides with :class:`core.liveness.LivenessTracker` whether a real head followed the session's random challenge.
The decision, never the page's, is matched against the patient's reference here, through the same reserved attempt
as a single frame (:mod:`core.services.faces`): one session is one attempt, and every failure (no face, several
faces, not live, no match, a page that went away) counts against the visit's round and the hourly caps.

Only a SHA-256 of the token is stored: the URL is the credential, for two minutes and one connection.
"""
from __future__ import annotations

import datetime as dt
import enum
import hashlib
import secrets
from dataclasses import dataclass

from core.errors import DomainError, IllegalTransition
from core.liveness import Challenge, Pose, Progress, random_challenge
from core.model import Actor, Language, VerificationMethod, VisitEvent, VisitMode, VisitState
from core.services import Context
from core.services.access import CLINIC_SYSTEM, Caller, check_visit
from core.services.faces import (
    FaceAttempt,
    FaceDecision,
    not_enrolled,
    record_face_attempt,
    release_face_attempt,
    reserve_face_attempt,
)
from core.services.visits import evidence_refusal

OPEN_WITHIN = dt.timedelta(minutes=2)  # from the POST until the page must have connected
ABANDONED = "abandoned"  # the page went away before the decision: a failure like any other, so it buys no retry


class SessionState(str, enum.Enum):
    OPEN = "open"          # made; waiting for the page to connect
    CLAIMED = "claimed"    # the page connected (once); frames are being read
    FINISHED = "finished"  # decided: the outcome is recorded
    REFUSED = "refused"    # the page connected, but no attempt could be reserved (locked, capped, closed …)
    FAILED = "failed"      # the server could not decide (a face worker died): the attempt was given back


class CaptureSessionUnavailable(DomainError):
    """An unknown, expired or already used token: one answer for all three, so a token reveals nothing."""
    code = "capture_session_unavailable"


@dataclass(frozen=True)
class OpenedSession:
    token: str  # shown once, in the URL
    session_id: int
    visit_id: int
    expires_at: dt.datetime
    language: Language


@dataclass(frozen=True)
class PageSession:
    """What the page needs before it connects: the patient's language, and how long the link is valid."""
    language: Language
    expires_at: dt.datetime


@dataclass(frozen=True)
class ClaimedSession:
    session_id: int
    visit_id: int
    challenge: Challenge
    attempt: FaceAttempt


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def session_challenge(ctx: Context) -> Challenge:
    """A random challenge per session from the system's CSPRNG; tests and dev may fix it (production refuses)."""
    fixed = ctx.settings.capture_challenge
    if fixed:
        return Challenge(tuple(Pose(pose) for pose in fixed.split(",")))
    return random_challenge(secrets.SystemRandom())


def _stored_challenge(challenge: Challenge) -> str:
    return f"{challenge.step_seconds}:" + ",".join(challenge.as_json())


def _read_challenge(text: str) -> Challenge:
    seconds, _, poses = text.partition(":")
    return Challenge(tuple(Pose(pose) for pose in poses.split(",")), float(seconds))


async def open_session(ctx: Context, clinic_id: int, visit_id: int, *, caller: Caller = CLINIC_SYSTEM) -> OpenedSession:
    """A one-time capture session for an in-person, scheduled visit inside its evidence window whose patient has an
    enrolled face; refused otherwise, exactly as a single frame would be (before any frame exists)."""
    now = ctx.clock.now()
    token = secrets.token_urlsafe(32)
    async with ctx.uow() as uow:
        visit = check_visit(caller, await uow.visits.get(visit_id, clinic_id))
        step = "open a capture session"
        if visit.mode is VisitMode.ONLINE:
            raise IllegalTransition(visit.id, visit.state.value, step,
                                    "online consultations are verified by one-time code only")
        if visit.state is not VisitState.SCHEDULED:
            raise IllegalTransition(visit.id, visit.state.value, step, "only a scheduled visit can be verified")
        refusal = evidence_refusal(ctx, visit, now, step)
        if refusal is not None:
            raise refusal
        if not await uow.templates.active(visit.patient_id):
            raise await not_enrolled(uow, visit.patient_id, visit_id)
        patient = await uow.patients.get(visit.patient_id)
        expires_at = now + OPEN_WITHIN
        session_id = await uow.capture_sessions.add(
            token_hash=_token_hash(token), visit_id=visit_id, clinic_id=clinic_id,
            challenge=_stored_challenge(session_challenge(ctx)), created_by=caller.actor, now=now,
            expires_at=expires_at, state=SessionState.OPEN.value)
        await uow.visits.record_event(visit, VisitEvent(visit.id, now, "capture_open", visit.state, visit.state,
                                                        Actor.CLINIC_SYSTEM, VerificationMethod.FACE_LIVE.value,
                                                        f"session {session_id} by {caller.actor}"))
        await uow.commit()
    return OpenedSession(token, session_id, visit_id, expires_at, patient.language)


async def page_session(ctx: Context, token: str) -> PageSession:
    """The page for a session that may still be opened; CaptureSessionUnavailable otherwise."""
    now = ctx.clock.now()
    async with ctx.uow(read_only=True) as uow:
        stored = await uow.capture_sessions.by_token(_token_hash(token))
        if stored is None or stored.state != SessionState.OPEN.value or stored.expires_at <= now:
            raise CaptureSessionUnavailable("this capture link is unknown, expired or already used; open a new "
                                            "capture session from the clinic's system")
        visit = await uow.visits.get(stored.visit_id)
        patient = await uow.patients.get(visit.patient_id)
    return PageSession(patient.language, stored.expires_at)


async def claim_session(ctx: Context, token: str) -> ClaimedSession:
    """Take the session for this connection (once, before it expires) and reserve its face attempt. A refusal
    by the visit's rules or caps (locked, capped, closed, outside its window) ends the session as refused."""
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        stored = await uow.capture_sessions.by_token(_token_hash(token))
        if stored is None or not await uow.capture_sessions.move(stored.id, SessionState.OPEN.value,
                                                                 SessionState.CLAIMED.value, before=now,
                                                                 claimed_at=now):
            raise CaptureSessionUnavailable("this capture link is unknown, expired or already used; open a new "
                                            "capture session from the clinic's system")
        await uow.commit()
    try:
        attempt = await reserve_face_attempt(ctx, stored.clinic_id, stored.visit_id)
    except DomainError as refused:
        await _end(ctx, stored.id, SessionState.REFUSED, refused.code, None)
        raise
    return ClaimedSession(stored.id, stored.visit_id, _read_challenge(stored.challenge), attempt)


@dataclass(frozen=True)
class SessionResult:
    decision: FaceDecision
    reason: str | None         # why not live (a NotLive value, or "abandoned")
    retry_after: int | None    # set when this failure locked face checks for the visit


async def finish_session(ctx: Context, claimed: ClaimedSession, progress: Progress | None) -> SessionResult:
    """Settle the session's attempt with the tracker's decision (None: the page went away before one): a live
    capture's frontal encoding is matched against the patient's references and verifies the visit as face_live;
    anything else is a counted failure."""
    reason: str | None = None
    if progress is not None and progress.outcome == "live":
        outcome, encoding = "ok", progress.frontal_encoding
    elif progress is not None and progress.outcome in ("no_face", "multiple_faces"):
        outcome, encoding = progress.outcome, None
    else:
        outcome, encoding = FaceDecision.NOT_LIVE.value, None
        reason = progress.reason.value if progress is not None and progress.reason is not None else ABANDONED
    result = await record_face_attempt(ctx, claimed.attempt, outcome, encoding,
                                       method=VerificationMethod.FACE_LIVE, reason=reason)
    await _end(ctx, claimed.session_id, SessionState.FINISHED, result.decision.value, reason)
    return SessionResult(result.decision, reason, result.retry_after)


async def fail_session(ctx: Context, claimed: ClaimedSession) -> None:
    """The server could not decide (a face worker died, the server is stopping): the attempt is given back."""
    await release_face_attempt(ctx, claimed.attempt)
    await _end(ctx, claimed.session_id, SessionState.FAILED, None, None)


async def _end(ctx: Context, session_id: int, state: SessionState, outcome: str | None, reason: str | None) -> None:
    async with ctx.uow() as uow:
        await uow.capture_sessions.move(session_id, SessionState.CLAIMED.value, state.value,
                                        finished_at=ctx.clock.now(), outcome=outcome, reason=reason)
        await uow.commit()
