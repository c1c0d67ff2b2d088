"""The web dashboard's reads and its one write (issue 13): the disputes queue and its reviews, a doctor's scorecard
with 30 days of evidence, the doctors of a clinic, and an auditor's clinics side by side ranked by red flags.

Who reads is a :class:`Viewer`: a clinic admin (one clinic) or an auditor (the clinics in their scope, decided by
:func:`core.services.access.audited_clinics` as for the API). Anything outside the viewer's scope answers NotFound,
as if absent. A review is the only write: appended (never edited, never removed), recorded in the clinic's audit
chain in the same transaction, and the reviewer's right to write is read again from the database at that moment
(a removed admin or auditor, or a clinic taken out of an auditor's scope, reviews nothing).
"""
from __future__ import annotations

import datetime as dt
import enum
import io
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from core import csvfile
from core.clock import ALMATY, local_day_bounds, to_local
from core.db.dashboard import DashboardQueries, DisputeReviewRepo
from core.db.repositories import AnyRow
from core.db.uow import UnitOfWork
from core.errors import InvalidValue, NotFound
from core.iin import mask_iin
from core.model import PatientAnswer, VisitState, patient_answer
from core.services import Context
from core.services.access import Caller, audited_clinics
from core.services.flags import Flag, FlagKind, find_flags, flags_in
from core.services.web_sessions import WebUser

SCORECARD_DAYS = 30
QUEUE_PAGE = 50  # disputes on one page of the queue (the next page starts after the last one's cursor)
FLAG_VISITS_SHOWN = 20  # a flag's visits listed on a scorecard (every id stays in the flag and its CSV)
NOTE_MAX = 2000
MAX_ID = 2**31 - 1  # ids are 32-bit integers on PostgreSQL


class ReviewOutcome(str, enum.Enum):
    UPHELD = "upheld"  # the patient is right: the visit (or change) should not stand
    REJECTED = "rejected"  # the evidence shows the patient was there (or made the change)
    NEEDS_FOLLOW_UP = "needs_follow_up"  # not decided: someone must ask the patient, the doctor or the clinic


class DisputeKind(str, enum.Enum):
    VISIT = "visit"  # "I wasn't there"
    CHANGE = "change"  # "this change to my face, phone or consent was not me"


@dataclass(frozen=True)
class Viewer:
    """Who is signed in to the dashboard: a clinic admin of ``clinic_id``, or an auditor with their clinics
    (None: every clinic)."""
    kind: str  # "admin" | "auditor"
    id: int
    clinic_id: int | None = None
    auditor_clinics: frozenset[int] | None = None

    @classmethod
    def admin(cls, admin_id: int, clinic_id: int) -> Viewer:
        return cls("admin", admin_id, clinic_id=clinic_id)

    @classmethod
    def auditor(cls, auditor_id: int, clinic_ids: Iterable[int] | None) -> Viewer:
        return cls("auditor", auditor_id, auditor_clinics=None if clinic_ids is None else frozenset(clinic_ids))

    @classmethod
    def of(cls, user: WebUser) -> Viewer:
        """The signed-in dashboard user (core.services.web_sessions) as the services here take it."""
        if user.is_auditor:
            return cls.auditor(user.subject_id, user.clinic_ids)
        if user.clinic_ids is None or len(user.clinic_ids) != 1:
            raise InvalidValue("a clinic admin's session names exactly one clinic")
        return cls.admin(user.subject_id, next(iter(user.clinic_ids)))

    @property
    def actor(self) -> str:
        return f"web:{self.kind}:{self.id}"

    @property
    def caller(self) -> Caller:
        if self.kind == "auditor":
            return Caller(self.actor, auditor_id=self.id, auditor_clinics=self.auditor_clinics)
        return Caller(self.actor)

    def scope(self, clinic_id: int | None = None) -> frozenset[int] | None:
        """The clinics a read covers: an admin's own clinic (another one answers NotFound), an auditor's one clinic
        or every clinic in scope (None: every clinic)."""
        if self.kind == "auditor":
            return audited_clinics(self.caller, clinic_id)
        if self.kind != "admin" or self.clinic_id is None:
            raise InvalidValue("a dashboard viewer is a clinic admin or an auditor")
        if clinic_id is not None and clinic_id != self.clinic_id:
            raise NotFound(f"clinic {clinic_id} not found")
        return frozenset({self.clinic_id})

    def sees(self, clinic_id: int) -> bool:
        scope = self.scope()
        return scope is None or clinic_id in scope


def _reads(uow: UnitOfWork) -> DashboardQueries:
    return DashboardQueries(uow.conn)


# --- the disputes queue ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Review:
    id: int
    reviewer: str  # "admin:<id>" | "auditor:<id>"
    reviewer_kind: str
    outcome: ReviewOutcome
    note: str
    at: dt.datetime


@dataclass(frozen=True)
class Dispute:
    kind: DisputeKind
    id: int  # the visit's or the change's id
    clinic_id: int
    clinic_name: str
    patient_id: int
    patient: str  # the IIN masked to its last four digits
    disputed_at: dt.datetime
    what: str  # a visit's service code; a change's kind (face_enrol, phone, consent...)
    happened_at: dt.datetime  # when the visit started / the change was made
    by: str  # the visit's doctor's name / the change's actor
    doctor_id: int | None = None
    evidence: str = ""  # a visit's method ("" for none) / ""
    reason: str = ""  # what the patient wrote
    reviews: tuple[Review, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.kind.value}-{self.id}"

    def latest(self, reviewer_kind: str) -> Review | None:
        """The latest review by a clinic admin ("admin") or by an auditor ("auditor"). Kept apart: a clinic that
        reviews again after an auditor does not push the auditor's outcome out of sight."""
        return next((r for r in reversed(self.reviews) if r.reviewer_kind == reviewer_kind), None)

    @property
    def cursor(self) -> str:
        """Where the queue's next page starts: after this dispute (its time in microseconds, kind and id)."""
        micros = int(self.disputed_at.timestamp()) * 1_000_000 + self.disputed_at.microsecond
        return f"{micros}.{self.kind.value}.{self.id}"


def _parse_cursor(cursor: str) -> tuple[dt.datetime, DisputeKind, int]:
    try:
        micros, kind, dispute_id = cursor.split(".")
        if len(micros) > 20 or not 0 < int(dispute_id) <= MAX_ID:
            raise ValueError(cursor)
        at = dt.datetime.fromtimestamp(int(micros) // 1_000_000, dt.UTC).replace(microsecond=int(micros) % 1_000_000)
        return at, DisputeKind(kind), int(dispute_id)
    except (ValueError, OverflowError, OSError):
        raise InvalidValue("the queue's page cursor is not one this server wrote") from None


@dataclass(frozen=True)
class QueueCounts:
    disputes: int
    unreviewed: int


async def disputes_queue(ctx: Context, viewer: Viewer, clinic_id: int | None = None, *, after: str | None = None,
                         unreviewed_only: bool = False, limit: int = QUEUE_PAGE) -> list[Dispute]:
    """The disputed visits and disputed changes of the viewer's clinics, oldest dispute first (then visits after
    changes of the same moment, then by id), each with its reviews: up to ``limit`` of them after the cursor
    ``after`` (a :attr:`Dispute.cursor`); ``unreviewed_only``: those no one has reviewed yet."""
    scope = viewer.scope(clinic_id)
    if not 1 <= limit <= 500:
        raise InvalidValue("a page of the queue holds 1 to 500 disputes")
    visits_after = changes_after = None
    if after is not None:
        at, kind, dispute_id = _parse_cursor(after)
        # changes sort before visits of the same moment: after a change, every visit of that moment is still due
        visits_after = (at, dispute_id if kind is DisputeKind.VISIT else 0)
        changes_after = (at, dispute_id if kind is DisputeKind.CHANGE else MAX_ID)
    async with ctx.uow(read_only=True) as uow:
        q = _reads(uow)
        visits = await q.disputed_visits(scope, limit=limit, after=visits_after, unreviewed_only=unreviewed_only)
        changes = await q.disputed_changes(scope, limit=limit, after=changes_after, unreviewed_only=unreviewed_only)
        first = sorted([(v.answered_at, DisputeKind.VISIT.value, v.id) for v in visits]
                       + [(c.disputed_at, DisputeKind.CHANGE.value, c.id) for c in changes])[:limit]
        keep = {(kind, i) for _, kind, i in first}
        visits = [v for v in visits if (DisputeKind.VISIT.value, v.id) in keep]
        changes = [c for c in changes if (DisputeKind.CHANGE.value, c.id) in keep]
        reviews = await q.reviews([v.id for v in visits], [c.id for c in changes])
    by_dispute: dict[tuple[DisputeKind, int], list[Review]] = {}
    for r in reviews:
        key = (DisputeKind.VISIT, r.visit_id) if r.visit_id is not None else (DisputeKind.CHANGE, r.change_id)
        by_dispute.setdefault(key, []).append(Review(r.id, f"{r.reviewer_kind}:{r.reviewer_id}", r.reviewer_kind,
                                                     ReviewOutcome(r.outcome), r.note, r.at))
    queue = [Dispute(DisputeKind.VISIT, v.id, v.clinic_id, v.clinic_name, v.patient_id, mask_iin(v.iin),
                     v.answered_at, v.service_code, v.start_at, v.doctor_name, v.doctor_id, v.verified_by or "",
                     v.dispute_reason or "", tuple(by_dispute.get((DisputeKind.VISIT, v.id), ())))
             for v in visits]
    queue += [Dispute(DisputeKind.CHANGE, c.id, c.clinic_id, c.clinic_name, c.patient_id, mask_iin(c.iin),
                      c.disputed_at, c.kind, c.at, c.actor, reviews=tuple(by_dispute.get((DisputeKind.CHANGE, c.id),
                                                                                          ())))
              for c in changes]
    return sorted(queue, key=lambda d: (d.disputed_at, d.kind.value, d.id))


async def queue_counts(ctx: Context, viewer: Viewer, clinic_id: int | None = None) -> QueueCounts:
    """How many disputes the viewer's clinics have, and how many no one has reviewed yet."""
    scope = viewer.scope(clinic_id)
    async with ctx.uow(read_only=True) as uow:
        total, unreviewed = await _reads(uow).dispute_counts(scope)
    return QueueCounts(total, unreviewed)


async def review_dispute(ctx: Context, viewer: Viewer, kind: DisputeKind | str, dispute_id: int,
                         outcome: ReviewOutcome | str, note: str = "") -> Review:
    """Record the viewer's review of one dispute in their scope. The dispute itself is not touched."""
    try:
        kind, outcome = DisputeKind(kind), ReviewOutcome(outcome)
    except ValueError as exc:
        raise InvalidValue(f"unknown dispute kind or outcome: {exc}; outcomes are "
                           f"{', '.join(o.value for o in ReviewOutcome)}") from None
    note = _clean_note(note)
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        if kind is DisputeKind.VISIT:
            visit = await uow.visits.get(dispute_id)
            clinic_id, disputed = visit.clinic_id, visit.state is VisitState.PATIENT_DISPUTED
        else:
            change = await uow.patient_changes.get(dispute_id)
            clinic_id, disputed = change.clinic_id, change.disputed_at is not None
        await _may_review(uow, viewer, clinic_id)
        if not disputed:  # nothing to review: answers as if absent, like a dispute of another clinic
            raise NotFound(f"{kind.value} {dispute_id} is not disputed")
        review_id = await DisputeReviewRepo(uow.conn, uow.row_locks).add(
            clinic_id=clinic_id, visit_id=dispute_id if kind is DisputeKind.VISIT else None,
            change_id=dispute_id if kind is DisputeKind.CHANGE else None, reviewer_kind=viewer.kind,
            reviewer_id=viewer.id, actor=viewer.actor, outcome=outcome.value, note=note, at=now)
        await uow.audit.append(now, viewer.actor, "dispute.review",
                               f"{'visit' if kind is DisputeKind.VISIT else 'patient_change'}:{dispute_id}",
                               {"review": review_id, "outcome": outcome.value, "note": note}, clinic_id=clinic_id)
        await uow.commit()
    return Review(review_id, f"{viewer.kind}:{viewer.id}", viewer.kind, outcome, note, now)


def _clean_note(note: str) -> str:
    note = (note or "").replace("\r\n", "\n").strip()
    if len(note) > NOTE_MAX:
        raise InvalidValue(f"the note is {len(note)} characters long; at most {NOTE_MAX} are kept")
    if any(ord(ch) < 32 and ch not in "\n\t" for ch in note):
        raise InvalidValue("the note holds control characters; write plain text")
    return note


async def _may_review(uow: UnitOfWork, viewer: Viewer, clinic_id: int) -> None:
    """The reviewer as stored now, not as the session remembers: NotFound when the dispute is not theirs to see."""
    if viewer.kind == "admin":
        try:
            admin = await uow.admins.get(viewer.id)
        except NotFound:
            raise NotFound("dispute not found") from None
        if admin.clinic_id != clinic_id or viewer.clinic_id != clinic_id:
            raise NotFound("dispute not found")
        return
    if viewer.kind != "auditor":
        raise InvalidValue("a dashboard viewer is a clinic admin or an auditor")
    try:
        auditor = await uow.auditors.get(viewer.id)
    except NotFound:
        raise NotFound("dispute not found") from None
    in_scope = auditor.all_clinics or clinic_id in auditor.clinic_ids
    if auditor.removed_at is not None or not in_scope or not viewer.sees(clinic_id):
        raise NotFound("dispute not found")


QUEUE_COLUMNS = ("kind", "id", "clinic_id", "clinic", "patient_id", "patient", "disputed_at", "what", "happened_at",
                 "by", "evidence", "reason", "reviews", "clinic_outcome", "clinic_note", "auditor_outcome",
                 "auditor_note")


def disputes_csv(queue: Iterable[Dispute]) -> str:
    """The queue as the page shows it (times in Asia/Almaty), through the escaped writer."""
    out = io.StringIO()
    writer = csvfile.writer(out)
    writer.writerow(QUEUE_COLUMNS)
    for d in queue:
        clinic, auditor = d.latest("admin"), d.latest("auditor")
        writer.writerow([d.kind.value, d.id, d.clinic_id, d.clinic_name, d.patient_id, d.patient, _local(d.disputed_at),
                         d.what, _local(d.happened_at), d.by, d.evidence, d.reason, len(d.reviews),
                         *(cell for r in (clinic, auditor) for cell in ((r.outcome.value, r.note) if r else ("", "")))])
    return out.getvalue()


def _local(moment: dt.datetime | None) -> str:
    return to_local(moment, ALMATY).strftime("%Y-%m-%d %H:%M") if moment is not None else ""


# --- a doctor's scorecard -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DayCounts:
    """One Asia/Almaty day of a doctor's billed visits: how each was verified and what its patient answered."""
    day: dt.date
    face_live: int = 0
    face: int = 0
    code: int = 0
    unverified: int = 0
    scheduled: int = 0  # still waiting for evidence
    confirmed: int = 0
    disputed: int = 0
    claimed: int = 0  # "I was there" to a visit never verified
    no_answer: int = 0

    @property
    def visits(self) -> int:
        return self.face_live + self.face + self.code + self.unverified + self.scheduled


METHODS = ("face_live", "face", "code", "unverified", "scheduled")
ANSWERS = ("confirmed", "disputed", "claimed", "no_answer")


@dataclass(frozen=True)
class VisitBrief:
    id: int
    start_at: dt.datetime
    patient: str  # masked IIN
    service_code: str
    mode: str
    evidence: str  # the method, "" for none
    answer: PatientAnswer
    registered_late: bool


@dataclass(frozen=True)
class FlagOnCard:
    flag: Flag
    visits: tuple[VisitBrief, ...]  # the first FLAG_VISITS_SHOWN of flag.visit_ids


@dataclass(frozen=True)
class Scorecard:
    clinic_id: int
    doctor_id: int
    doctor_name: str
    first_day: dt.date
    last_day: dt.date
    days: tuple[DayCounts, ...]  # every day of the period, those without visits too, oldest first
    flags: tuple[FlagOnCard, ...]

    def totals(self) -> DayCounts:
        sums: Counter[str] = Counter()
        for d in self.days:
            sums.update({name: getattr(d, name) for name in (*METHODS, *ANSWERS)})
        return DayCounts(self.last_day, **sums)


def period_ending(last_day: dt.date, days: int = SCORECARD_DAYS) -> tuple[dt.date, dt.date]:
    if not 1 <= days <= 366:
        raise InvalidValue("a period is 1 to 366 days")
    return last_day - dt.timedelta(days=days - 1), last_day


async def doctor_scorecard(ctx: Context, viewer: Viewer, doctor_id: int, last_day: dt.date, *,
                           days: int = SCORECARD_DAYS) -> Scorecard:
    """The doctor's red flags over the ``days`` Asia/Almaty days ending ``last_day`` with the visits behind each, and
    per day the methods that verified their visits and their patients' answers. NotFound outside the scope."""
    first_day, last_day = period_ending(last_day, days)
    start, end = local_day_bounds(first_day, ALMATY)[0], local_day_bounds(last_day, ALMATY)[1]
    async with ctx.uow(read_only=True) as uow:
        try:
            doctor = await uow.doctors.get(doctor_id)
        except NotFound:
            raise NotFound(f"doctor {doctor_id} not found") from None
        if not viewer.sees(doctor.clinic_id):
            raise NotFound(f"doctor {doctor_id} not found")
        rows = await _reads(uow).doctor_days(doctor_id, start, end)
        # one read for the counts, the flags and their visits (one snapshot on SQLite, one connection either way)
        flags = await flags_in(uow, ctx.settings, first_day, last_day, clinic_id=doctor.clinic_id,
                               doctor_id=doctor_id)
        shown = sorted({i for f in flags for i in f.visit_ids[:FLAG_VISITS_SHOWN]})
        briefs = {b.id: b for b in map(_brief, await _reads(uow).visit_briefs(shown))}
    counted = {_as_date(r.day): DayCounts(_as_date(r.day), **{n: int(getattr(r, n)) for n in (*METHODS, *ANSWERS)})
               for r in rows}
    series = tuple(counted.get(day, DayCounts(day)) for day in _days(first_day, last_day))
    on_card = tuple(FlagOnCard(f, tuple(briefs[i] for i in f.visit_ids[:FLAG_VISITS_SHOWN] if i in briefs))
                    for f in flags)
    assert doctor.id is not None
    return Scorecard(doctor.clinic_id, doctor.id, doctor.full_name, first_day, last_day, series, on_card)


def _brief(row: AnyRow) -> VisitBrief:
    return VisitBrief(row.id, row.start_at, mask_iin(row.iin), row.service_code, row.mode, row.verified_by or "",
                      patient_answer(VisitState(row.state), row.attended_claim_at), bool(row.registered_late))


def _as_date(value: dt.date | str) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(value)


def _days(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


DAY_COLUMNS = ("day", "visits", *METHODS, *ANSWERS)


def scorecard_days_csv(card: Scorecard) -> str:
    out = io.StringIO()
    writer = csvfile.writer(out)
    writer.writerow(DAY_COLUMNS)
    for d in card.days:
        writer.writerow([d.day.isoformat(), d.visits, *(getattr(d, n) for n in (*METHODS, *ANSWERS))])
    return out.getvalue()


# --- a clinic's doctors, and an auditor's clinics side by side -----------------------------------------------------

@dataclass(frozen=True)
class Totals:
    id: int
    name: str
    visits: int
    code: int
    unverified: int
    disputed: int
    flags: int = 0
    flagged_visits: int = 0  # distinct visits behind the flags
    kinds: tuple[FlagKind, ...] = ()  # the kinds of flag raised, in FlagKind order
    rank: int = 0  # 1: the most flags (clinics only)

    def share(self, part: int) -> float:
        return part / self.visits if self.visits else 0.0


@dataclass(frozen=True)
class Overview:
    first_day: dt.date
    last_day: dt.date
    rows: tuple[Totals, ...]
    flags: tuple[Flag, ...] = field(default=(), repr=False)


async def clinic_doctors(ctx: Context, viewer: Viewer, clinic_id: int, last_day: dt.date, *,
                         days: int = SCORECARD_DAYS) -> Overview:
    """Every doctor of one clinic in scope with their totals and red flags over the period, by name."""
    viewer.scope(clinic_id)
    first_day, last_day = period_ending(last_day, days)
    start, end = local_day_bounds(first_day, ALMATY)[0], local_day_bounds(last_day, ALMATY)[1]
    async with ctx.uow(read_only=True) as uow:
        rows = await _reads(uow).doctor_totals(clinic_id, start, end)
    flags = [f for f in await find_flags(ctx, first_day, last_day, clinic_id=clinic_id) if f.doctor_id is not None]
    return Overview(first_day, last_day, tuple(_with_flags(r, r.full_name, [f for f in flags if f.doctor_id == r.id])
                                               for r in rows), tuple(flags))


async def clinics_ranking(ctx: Context, viewer: Viewer, last_day: dt.date, *,
                          days: int = SCORECARD_DAYS) -> Overview:
    """An auditor's clinics side by side over the period, most flags first (then most flagged visits, then the
    share of visits with no evidence); ``rank`` numbers them. Only an auditor reads across clinics."""
    scope = audited_clinics(viewer.caller, None)
    first_day, last_day = period_ending(last_day, days)
    start, end = local_day_bounds(first_day, ALMATY)[0], local_day_bounds(last_day, ALMATY)[1]
    async with ctx.uow(read_only=True) as uow:
        rows = await _reads(uow).clinic_totals(scope, start, end)
    if scope is not None and len(scope) == 1:
        flags = await find_flags(ctx, first_day, last_day, clinic_id=next(iter(scope)))
    else:
        flags = [f for f in await find_flags(ctx, first_day, last_day) if scope is None or f.clinic_id in scope]
    clinics = [_with_flags(r, r.name, [f for f in flags if f.clinic_id == r.id]) for r in rows]
    clinics.sort(key=lambda c: (-c.flags, -c.flagged_visits, -c.share(c.unverified), c.id))
    ranked = tuple(Totals(**{**c.__dict__, "rank": i}) for i, c in enumerate(clinics, start=1))
    return Overview(first_day, last_day, ranked, tuple(flags))


def _with_flags(row: AnyRow, name: str, flags: list[Flag]) -> Totals:
    order = list(FlagKind)
    return Totals(row.id, name, int(row.visits), int(row.code), int(row.unverified), int(row.disputed), len(flags),
                  len({i for f in flags for i in f.visit_ids}), tuple(sorted({f.kind for f in flags}, key=order.index)))


TOTALS_COLUMNS = ("rank", "id", "name", "visits", "code", "unverified", "disputed", "flags", "flagged_visits",
                  "flag_kinds")


def totals_csv(overview: Overview) -> str:
    out = io.StringIO()
    writer = csvfile.writer(out)
    writer.writerow(TOTALS_COLUMNS)
    for r in overview.rows:
        writer.writerow([r.rank or "", r.id, r.name, r.visits, r.code, r.unverified, r.disputed, r.flags,
                         r.flagged_visits, " ".join(k.value for k in r.kinds)])
    return out.getvalue()

