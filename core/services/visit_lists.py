"""What a chat may list: a patient's recent visits, a doctor's online consultations of today, one visit."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from core.clock import ALMATY, local_day_bounds, to_local
from core.db.repositories import AnyRow
from core.model import VisitMode, VisitState
from core.services import Context

PATIENT_HISTORY_DAYS = 30


@dataclass(frozen=True)
class VisitLine:
    visit_id: int
    clinic_id: int
    doctor_id: int
    clinic_name: str
    doctor_name: str
    patient_name: str
    start: dt.datetime
    mode: VisitMode
    state: VisitState
    verified_by: str | None
    answered_at: dt.datetime | None
    attended_claim_at: dt.datetime | None
    patient_reachable: bool
    patient_id: int = 0


def visit_line_of(r: AnyRow) -> VisitLine:
    return _line(r)


def _line(r: AnyRow) -> VisitLine:
    return VisitLine(visit_id=r.id, clinic_id=r.clinic_id, doctor_id=r.doctor_id, clinic_name=r.clinic_name,
                     doctor_name=r.doctor_name, patient_name=r.patient_name, start=r.start_at, mode=VisitMode(r.mode),
                     state=VisitState(r.state), verified_by=r.verified_by, answered_at=r.answered_at,
                     attended_claim_at=r.attended_claim_at,
                     patient_reachable=r.chat_id is not None and not r.chat_blocked, patient_id=r.patient_id)


async def patient_visits(ctx: Context, patient_ids: list[int], days: int = PATIENT_HISTORY_DAYS) -> list[VisitLine]:
    """The patient's visits that started in the last ``days`` days (and today's later ones), newest first."""
    if not patient_ids:
        return []
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        rows = await uow.queries.patient_visit_lines(patient_ids, now - dt.timedelta(days=days),
                                                     now + dt.timedelta(days=1))
    return [_line(r) for r in rows]


async def doctor_online_today(ctx: Context, doctor_ids: list[int]) -> list[VisitLine]:
    """The doctors' online consultations of today (Asia/Almaty) that still wait for verification."""
    if not doctor_ids:
        return []
    start, end = local_day_bounds(to_local(ctx.clock.now(), ALMATY).date(), ALMATY)
    async with ctx.uow() as uow:
        rows = await uow.queries.online_scheduled_lines(doctor_ids, start, end)
    return [_line(r) for r in rows]


async def visit_line(ctx: Context, visit_id: int) -> VisitLine | None:
    async with ctx.uow() as uow:
        row = await uow.queries.visit_line(visit_id)
    return _line(row) if row else None
