"""The web dashboard's day page (issue 13): one clinic's visits of one day with their evidence, filtered by doctor,
mode and state, and one visit's timeline (registered → code sent → verified → asked → answered).

Which clinic a signed-in user may read is decided here (:func:`clinics_of`): an admin only their own; an auditor the
clinics of their scope (the same rule as their API key, core.services.access.audited_clinics). Anything else answers
NotFound, as if absent, so a URL cannot learn what exists elsewhere.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from core.clock import ALMATY, local_day_bounds
from core.db.repositories import AnyRow
from core.db.web import web_queries
from core.errors import NotFound
from core.model import OutboxKind, PatientAnswer, VerificationMethod, VisitMode, VisitState, patient_answer
from core.services import Context
from core.services.web_sessions import WebUser

DAY_LIMIT = 2000  # visits on one page of a day: a large clinic has a few hundred


@dataclass(frozen=True)
class ClinicChoice:
    id: int
    name: str


@dataclass(frozen=True)
class DayFilters:
    doctor_id: int | None = None
    mode: VisitMode | None = None
    state: VisitState | None = None


@dataclass(frozen=True)
class DayVisit:
    id: int
    start: dt.datetime
    doctor_id: int
    doctor_name: str
    patient_name: str
    mode: VisitMode
    service_code: str
    state: VisitState
    verified_by: VerificationMethod | None
    verified_at: dt.datetime | None
    registered_at: dt.datetime
    registered_late: bool
    answer: PatientAnswer
    answered_at: dt.datetime | None
    fresh_reference: bool


@dataclass(frozen=True)
class DayPage:
    clinic: ClinicChoice
    day: dt.date
    filters: DayFilters
    visits: list[DayVisit]
    doctors: list[tuple[int, str]]
    truncated: bool
    clinics: list[ClinicChoice]  # every clinic the user reads, for the page's clinic choice


@dataclass(frozen=True)
class TimelineStep:
    at: dt.datetime
    step: str  # registered | code_requested | code_issued | code_sent | capture_open | face_attempt | verified |
    #            closed_unverified | cancelled | asked | confirmed | disputed | claimed_attended
    method: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class Timeline:
    visit: DayVisit
    clinic: ClinicChoice
    steps: list[TimelineStep]


async def clinics_of(ctx: Context, user: WebUser) -> list[ClinicChoice]:
    """The clinics this user reads, by name."""
    async with ctx.uow(read_only=True) as uow:
        if user.clinic_ids is None:
            return [ClinicChoice(c.id, c.name) for c in await uow.clinics.list() if c.id is not None]
        names = await uow.queries.clinic_names(set(user.clinic_ids))
    return sorted((ClinicChoice(i, n) for i, n in names.items()), key=lambda c: (c.name, c.id))


async def clinic_for(ctx: Context, user: WebUser, requested: int | None) -> ClinicChoice:
    """The clinic asked for (NotFound outside the user's clinics), or the user's first."""
    return _chosen(await clinics_of(ctx, user), requested)


def _chosen(clinics: list[ClinicChoice], requested: int | None) -> ClinicChoice:
    if requested is None:
        if not clinics:
            raise NotFound("no clinic to show")
        return clinics[0]
    for clinic in clinics:
        if clinic.id == requested:
            return clinic
    raise NotFound(f"clinic {requested} not found")


def _visit(r: AnyRow) -> DayVisit:
    state = VisitState(r.state)
    return DayVisit(id=r.id, start=r.start_at, doctor_id=r.doctor_id, doctor_name=r.doctor_name,
                    patient_name=r.patient_name, mode=VisitMode(r.mode), service_code=r.service_code, state=state,
                    verified_by=VerificationMethod(r.verified_by) if r.verified_by else None,
                    verified_at=r.verified_at, registered_at=r.created_at, registered_late=bool(r.registered_late),
                    answer=patient_answer(state, r.attended_claim_at),
                    answered_at=r.answered_at or r.attended_claim_at, fresh_reference=bool(r.fresh_reference))


async def _record_auditor_read(ctx: Context, user: WebUser, clinic_id: int, details: dict[str, object]) -> None:
    """An auditor's read of a clinic's records is a row of that clinic's audit chain, as their API exports are: the
    clinic can see who from the payer read what, and when."""
    if not user.is_auditor:
        return
    async with ctx.uow() as uow:
        await uow.audit.append(ctx.clock.now(), user.caller.actor, "auditor.web_read", f"auditor:{user.subject_id}",
                               details, clinic_id=clinic_id)
        await uow.commit()


async def day_page(ctx: Context, user: WebUser, clinic_id: int | None, day: dt.date,
                   filters: DayFilters, *, export: bool = False) -> DayPage:
    """The clinic's visits of the day (``export``: for the CSV file, so named in an auditor's audit row)."""
    clinics = await clinics_of(ctx, user)
    clinic = _chosen(clinics, clinic_id)
    start, end = local_day_bounds(day, ALMATY)
    async with ctx.uow(read_only=True) as uow:
        rows = await web_queries(uow).day_visits(
            clinic.id, start, end, doctor_id=filters.doctor_id, mode=filters.mode.value if filters.mode else None,
            state=filters.state.value if filters.state else None, limit=DAY_LIMIT + 1)
        doctors = [(d.id, d.full_name) for d in await uow.doctors.list_by_clinic(clinic.id) if d.id is not None]
    page = DayPage(clinic, day, filters, [_visit(r) for r in rows[:DAY_LIMIT]], sorted(doctors, key=lambda d: d[1]),
                   truncated=len(rows) > DAY_LIMIT, clinics=clinics)
    await _record_auditor_read(ctx, user, clinic.id, {
        "page": "day.csv" if export else "day", "day": day.isoformat(), "visits": len(page.visits),
        "doctor": filters.doctor_id, "mode": filters.mode.value if filters.mode else None,
        "state": filters.state.value if filters.state else None})
    return page


_STEP_NAMES = {"register": "registered", "verify": "verified", "close_unverified": "closed_unverified",
               "cancel": "cancelled", "patient_confirm": "confirmed", "patient_dispute": "disputed"}
_DELIVERY_STEPS = {OutboxKind.VISIT_CODE.value: "code_sent", OutboxKind.ATTENDANCE_PROMPT.value: "asked"}


async def timeline(ctx: Context, user: WebUser, clinic_id: int | None, visit_id: int) -> Timeline:
    """A visit of one of the user's clinics with every step it went through, in time order (NotFound otherwise)."""
    clinic = await clinic_for(ctx, user, clinic_id)
    async with ctx.uow(read_only=True) as uow:
        row = await web_queries(uow).day_visit(clinic.id, visit_id)
        if row is None:
            raise NotFound(f"visit {visit_id} not found")
        events = await uow.visits.events(visit_id)
        deliveries = await web_queries(uow).deliveries(visit_id)
    visit = _visit(row)
    steps = [TimelineStep(e.at, _STEP_NAMES.get(e.step, e.step), e.method, e.detail) for e in events]
    steps += [TimelineStep(d.sent_at, _DELIVERY_STEPS[d.kind]) for d in deliveries if d.kind in _DELIVERY_STEPS]
    if visit.answer is PatientAnswer.CLAIMED_ATTENDED and row.attended_claim_at is not None:
        steps.append(TimelineStep(row.attended_claim_at, "claimed_attended"))
    steps.sort(key=lambda s: s.at)
    await _record_auditor_read(ctx, user, clinic.id, {"page": "visit", "visit": visit_id})
    return Timeline(visit, clinic, steps)
