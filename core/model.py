"""The visit-verification domain: pure data and rules, no I/O.

A visit moves through an explicit state machine. Every transition returns a :class:`VisitEvent`
(UTC time, actor, method) that the storage layer records and chains into the audit log.
"""
from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any

from core.errors import IllegalTransition, InvalidValue
from core.iin import is_reduced, parse_iin, reduced_facts
from core.phone import normalise_phone


class Language(str, enum.Enum):
    KK = "kk"
    RU = "ru"


class VisitMode(str, enum.Enum):
    IN_PERSON = "in_person"
    ONLINE = "online"


class VisitState(str, enum.Enum):
    SCHEDULED = "scheduled"
    VERIFIED = "verified"
    UNVERIFIED = "unverified"
    PATIENT_CONFIRMED = "patient_confirmed"
    PATIENT_DISPUTED = "patient_disputed"
    CANCELLED = "cancelled"


class VerificationMethod(str, enum.Enum):
    FACE = "face"            # one frame posted by the clinic's system: a photo of the patient passes it (weaker)
    CODE = "code"
    FACE_LIVE = "face_live"  # a capture session on Rastau's own page: a head-turn challenge, then the face match

    @property
    def is_face(self) -> bool:
        return self is not VerificationMethod.CODE


# How strong each kind of evidence is, as every reader of evidence (visit, digest, CSV, chat) labels it: a single
# frame proves only that someone had a picture of the patient's face; a live capture that a 3-D head turned on cue.
EVIDENCE_STRENGTH = {VerificationMethod.FACE: "single_frame", VerificationMethod.FACE_LIVE: "live",
                     VerificationMethod.CODE: "code"}


class Actor(str, enum.Enum):
    CLINIC_SYSTEM = "clinic_system"
    DOCTOR = "doctor"
    PATIENT = "patient"
    SCHEDULER = "scheduler"
    ADMIN = "admin"


class PatientAnswer(str, enum.Enum):
    """What the patient said about a visit, as the visit and the digest show it."""
    CONFIRMED = "confirmed"
    DISPUTED = "disputed"
    CLAIMED_ATTENDED = "claimed_attended"  # "yes, I was there" to a visit that was never verified
    NONE = "none"


def patient_answer(state: VisitState, attended_claim_at: dt.datetime | None) -> PatientAnswer:
    """The one rule: a confirmed or disputed state is the answer; else a claim on an unverified visit; else none."""
    if state is VisitState.PATIENT_CONFIRMED:
        return PatientAnswer.CONFIRMED
    if state is VisitState.PATIENT_DISPUTED:
        return PatientAnswer.DISPUTED
    return PatientAnswer.CLAIMED_ATTENDED if attended_claim_at is not None else PatientAnswer.NONE


# The detail of a face verification's event when the matched reference was enrolled under 24 hours before and the
# patient had no chat to hear of that enrolment: what the visit and the digest show as `fresh_reference`.
FRESH_REFERENCE = "fresh_reference"

# A patient may turn "yes, I was there" into "I wasn't there" for this long; after that answers are final.
ANSWER_CORRECTION_WINDOW = dt.timedelta(hours=48)


def ensure_utc(moment: dt.datetime, what: str = "time") -> dt.datetime:
    if moment.tzinfo is None:
        raise InvalidValue(f"{what} must carry a time zone (e.g. 2026-11-25T09:00:00+05:00)")
    return moment.astimezone(dt.UTC)


@dataclass
class Clinic:
    id: int | None
    name: str


@dataclass
class Doctor:
    id: int | None
    clinic_id: int
    full_name: str
    phone: str
    external_ref: str | None = None
    chat_id: int | None = None

    def __post_init__(self) -> None:
        self.phone = normalise_phone(self.phone)


@dataclass
class ClinicAdmin:
    id: int | None
    clinic_id: int
    full_name: str
    phone: str
    chat_id: int | None = None

    def __post_init__(self) -> None:
        self.phone = normalise_phone(self.phone)


@dataclass
class Patient:
    id: int | None
    clinic_id: int
    iin: str
    full_name: str
    phone: str
    language: Language = Language.RU
    chat_id: int | None = None
    chat_blocked: bool = False
    consent_at: dt.datetime | None = None
    consent_by: str | None = None

    def __post_init__(self) -> None:
        if self.reduced:  # issue 16: after the billing-audit period, no phone and the IIN masked (core.iin)
            reduced_facts(self.iin)
            if self.phone:
                raise InvalidValue("a patient reduced after the billing-audit period keeps no phone number")
        else:
            self.iin = parse_iin(self.iin).iin
            self.phone = normalise_phone(self.phone)
        self.language = Language(self.language)

    @property
    def reduced(self) -> bool:
        """Reduced by retention (issue 16): the IIN keeps birth date and sex only, the phone is gone."""
        return is_reduced(self.iin)

    @property
    def birth_date(self) -> dt.date:
        return (reduced_facts(self.iin) if self.reduced else parse_iin(self.iin)).birth_date

    @property
    def sex(self) -> str:
        return (reduced_facts(self.iin) if self.reduced else parse_iin(self.iin)).sex

    def record_consent(self, by: str, at: dt.datetime) -> None:
        if not by or not by.strip():
            raise InvalidValue("consent must name who recorded it (e.g. the nurse's name or staff id)")
        self.consent_by, self.consent_at = by.strip(), ensure_utc(at, "consent time")


@dataclass(frozen=True)
class VisitEvent:
    visit_id: int | None
    at: dt.datetime
    step: str
    from_state: VisitState | None
    to_state: VisitState
    actor: Actor
    method: str | None = None
    detail: str | None = None


@dataclass
class Visit:
    id: int | None
    clinic_id: int
    doctor_id: int
    patient_id: int
    start: dt.datetime
    duration: dt.timedelta
    mode: VisitMode
    service_code: str
    state: VisitState = VisitState.SCHEDULED
    verified_by: VerificationMethod | None = None
    verified_at: dt.datetime | None = None
    answered_at: dt.datetime | None = None
    dispute_reason: str | None = None
    attended_claim_at: dt.datetime | None = None
    registered_at: dt.datetime | None = None
    registered_late: bool = False  # registered after its window had closed: it can collect no evidence
    verified_enrolment_id: int | None = None  # the face enrolment (patient change) a match was made against
    enrolled_at: dt.datetime | None = None  # when that enrolment was made
    fresh_reference: bool = False  # the match was against a reference the patient had no chance to hear of
    pending_events: list[VisitEvent] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.start = ensure_utc(self.start, "visit start")
        self.mode = VisitMode(self.mode)
        self.state = VisitState(self.state)
        if self.verified_by is not None:
            self.verified_by = VerificationMethod(self.verified_by)
        if self.duration <= dt.timedelta(0) or self.duration > dt.timedelta(hours=12):
            raise InvalidValue("visit duration must be between 1 minute and 12 hours")
        if not self.service_code or len(self.service_code) > 64:
            raise InvalidValue("service code must be 1-64 characters")

    @property
    def end(self) -> dt.datetime:
        return self.start + self.duration

    @property
    def answer(self) -> PatientAnswer:
        return patient_answer(self.state, self.attended_claim_at)

    def _move(self, step: str, to: VisitState, actor: Actor | str, at: dt.datetime,
              method: str | None = None, detail: str | None = None) -> VisitEvent:
        event = VisitEvent(self.id, ensure_utc(at), step, self.state, to, Actor(actor), method, detail)
        self.state = to
        self.pending_events.append(event)
        return event

    def verify(self, method: VerificationMethod, actor: Actor, at: dt.datetime,
               detail: str | None = None) -> VisitEvent:
        """Record that the patient was proven present. Online visits accept codes only."""
        method = VerificationMethod(method)
        step = f"verify by {method.value}"
        if method.is_face and self.mode is VisitMode.ONLINE:
            raise IllegalTransition(self.id, self.state.value, step,
                                    "online consultations are verified by one-time code only")
        if self.state is not VisitState.SCHEDULED:
            raise IllegalTransition(self.id, self.state.value, step, "only a scheduled visit can be verified")
        self.verified_by, self.verified_at = method, ensure_utc(at)
        return self._move("verify", VisitState.VERIFIED, actor, at, method.value, detail)

    def close_unverified(self, at: dt.datetime) -> VisitEvent:
        """The verification window closed with no face match and no code."""
        if self.state is not VisitState.SCHEDULED:
            raise IllegalTransition(self.id, self.state.value, "mark unverified")
        return self._move("close_unverified", VisitState.UNVERIFIED, Actor.SCHEDULER, at)

    def cancel(self, actor: Actor, at: dt.datetime, reason: str | None = None) -> VisitEvent:
        if self.state is not VisitState.SCHEDULED:
            raise IllegalTransition(self.id, self.state.value, "cancel", "only a scheduled visit can be cancelled")
        return self._move("cancel", VisitState.CANCELLED, actor, at, detail=reason)

    def confirm_by_patient(self, at: dt.datetime) -> VisitEvent | None:
        """Patient says "yes, I was there". Returns None when the same answer was already given."""
        if self.state is VisitState.PATIENT_CONFIRMED:
            return None
        if self.state is not VisitState.VERIFIED:
            raise IllegalTransition(self.id, self.state.value, "confirm attendance",
                                    "only a verified visit can be confirmed by the patient")
        self.answered_at = ensure_utc(at)
        return self._move("patient_confirm", VisitState.PATIENT_CONFIRMED, Actor.PATIENT, at)

    def claim_attended_unverified(self, at: dt.datetime) -> VisitEvent | None:
        """Patient says "yes" to a visit that was never verified: kept as evidence, the state stays."""
        if self.state is not VisitState.UNVERIFIED:
            raise IllegalTransition(self.id, self.state.value, "record attendance claim")
        if self.attended_claim_at is not None:
            return None
        self.attended_claim_at = ensure_utc(at)
        event = VisitEvent(self.id, self.attended_claim_at, "patient_claims_attended", self.state, self.state,
                           Actor.PATIENT)
        self.pending_events.append(event)
        return event

    def dispute_by_patient(self, at: dt.datetime, reason: str | None = None, *,
                           via: str | None = None) -> VisitEvent | None:
        """Patient says "I wasn't there". Returns None when already disputed (a second press changes nothing).
        ``via`` (e.g. ``chat:<id>``) is kept in the event's detail: only that chat may take the dispute back."""
        at = ensure_utc(at)
        if self.state is VisitState.PATIENT_DISPUTED:
            return None
        if self.state is VisitState.CANCELLED:
            raise IllegalTransition(self.id, self.state.value, "dispute", "a cancelled visit was not billed")
        if self.state is VisitState.PATIENT_CONFIRMED:
            assert self.answered_at is not None
            if at - self.answered_at > ANSWER_CORRECTION_WINDOW:
                raise IllegalTransition(self.id, self.state.value, "dispute",
                                        "the answer became final 48 hours after it was given")
        self.answered_at = at
        self.dispute_reason = (reason or "").strip()[:1000] or None
        return self._move("patient_dispute", VisitState.PATIENT_DISPUTED, Actor.PATIENT, at, detail=via)

    def withdraw_dispute(self, at: dt.datetime, back_to: VisitState, answered_before: dt.datetime | None) -> VisitEvent:
        """The patient takes "I wasn't there" back: the visit returns to the state it was disputed from (with that
        state's answer time); the dispute's own event stays in the history and the audit log beside this one."""
        if self.state is not VisitState.PATIENT_DISPUTED:
            raise IllegalTransition(self.id, self.state.value, "withdraw dispute", "there is no dispute to take back")
        self.answered_at = answered_before
        self.dispute_reason = None
        return self._move("patient_withdraw_dispute", back_to, Actor.PATIENT, at)

    def add_dispute_reason(self, reason: str, at: dt.datetime) -> VisitEvent:
        if self.state is not VisitState.PATIENT_DISPUTED:
            raise IllegalTransition(self.id, self.state.value, "add dispute reason")
        self.dispute_reason = reason.strip()[:1000] or None
        event = VisitEvent(self.id, ensure_utc(at), "dispute_reason", self.state, self.state, Actor.PATIENT)
        self.pending_events.append(event)
        return event


class OutboxKind(str, enum.Enum):
    """What an outbox message says; the bot's renderer has one builder per kind."""
    VISIT_CODE = "visit_code"                         # to the patient: the one-time code
    ATTENDANCE_PROMPT = "attendance_prompt"           # to the patient: "were you there?"
    DISPUTE_NOTICE = "dispute_notice"                 # to the clinic's admins and auditors: "the patient wasn't there"
    DAILY_DIGEST = "daily_digest"                     # to the clinic's admins: the day's digest
    CHANGE_NOTICE = "patient_change_notice"           # to the patient: "this changed; wasn't you?"
    CHANGE_DISPUTE_NOTICE = "change_dispute_notice"   # to the clinic's admins and auditors: "it wasn't them"
    AUDITOR_SUMMARY = "auditor_summary"               # to an auditor: the day across their clinics, with the flags
    AUDIT_CHECKPOINT = "audit_checkpoint"             # to an auditor: the signed heads of the audit chains
    PAYER_EVENT = "payer_event"                       # to the payer's webhook: a dispute, a flag, a checkpoint
    CONSENT_WITHDRAWN_NOTICE = "consent_withdrawn"    # to the clinic's admins and auditors: the patient's /withdraw
    VISIT_CANCELLED = "visit_cancelled"               # to the patient: "the clinic cancelled it; the code is void"
    REASON_WAIT_END = "reason_wait_end"               # to the patient: the wait for a dispute's reason is over


class Recipient(str, enum.Enum):
    """Whose chat an outbox message goes to; its ``recipient_id`` is a row of that table."""
    PATIENT = "patient"
    DOCTOR = "doctor"
    ADMIN = "admin"
    AUDITOR = "auditor"
    PAYER = "payer"  # the payer's webhook (recipient_id 0): delivered over HTTP, never by the bot's chat dispatcher


class OutboxStatus(str, enum.Enum):
    PENDING = "pending"   # waiting for its due time
    SENDING = "sending"   # claimed by a dispatcher until its lease expires
    SENT = "sent"
    SKIPPED = "skipped"   # nothing to send: no linked chat, or no longer relevant
    BLOCKED = "blocked"   # the recipient blocked the bot
    FAILED = "failed"     # gave up: the retry budget is spent, or Telegram refused it


@dataclass(frozen=True)
class OutboxMessage:
    """A chat message to send later; stored in the same transaction as the change that causes it."""
    kind: OutboxKind
    recipient_kind: Recipient
    recipient_id: int
    due_at: dt.datetime
    payload: dict[str, Any]
    visit_id: int | None = None
    dedupe_key: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", OutboxKind(self.kind))
        object.__setattr__(self, "recipient_kind", Recipient(self.recipient_kind))


@dataclass(frozen=True)
class PatientChange:
    """A change to what identifies a patient (face, phone, consent): who made it, and whether the patient said
    "this wasn't me"."""
    id: int
    patient_id: int
    clinic_id: int
    kind: str
    at: dt.datetime
    actor: str
    disputed_at: dt.datetime | None = None
