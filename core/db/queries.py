"""Reads that span tables: the digest, what a chat is linked to and may list. Services read through here and
write through the repositories, so no service builds a statement on the tables itself.

Each method answers rows (attribute access by column label); the service that asked turns them into its own
read model."""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from core.db import tables as t
from core.db.repositories import ENROLLED_AT, FRESH, AnyRow
from core.model import VerificationMethod, VisitMode, VisitState

_v, _d, _p, _c, _pc = t.visits, t.doctors, t.patients, t.clinics, t.patient_changes
_CANCELLED, _SCHEDULED = VisitState.CANCELLED.value, VisitState.SCHEDULED.value
_CONFIRMED, _DISPUTED = VisitState.PATIENT_CONFIRMED.value, VisitState.PATIENT_DISPUTED.value


def _count(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


_billed = _v.c.state != _CANCELLED
_unverified = and_(_billed, _v.c.verified_by.is_(None), _v.c.state != _SCHEDULED)
_disputed = _v.c.state == _DISPUTED
# The digest's statements are built once with bound parameters (clinic, start, end): a statement this size costs
# SQLAlchemy as much to build and key for its cache as the database spends answering it.
_DAY = and_(_v.c.clinic_id == bindparam("clinic"), _v.c.start_at >= bindparam("start"),
            _v.c.start_at < bindparam("end"))
_DISPUTED_IN_DAY = and_(_pc.c.clinic_id == bindparam("clinic"), _pc.c.disputed_at >= bindparam("start"),
                        _pc.c.disputed_at < bindparam("end"))
# Per doctor, everything the digest's totals need: the counting happens in the database, in one pass over the day;
# each row also carries the clinic's name and how many changes its patients disputed that day.
_DIGEST_COUNTS = (
    select(_v.c.doctor_id, _d.c.full_name,
           _count(_billed).label("visits"),
           _count(and_(_billed, _v.c.verified_by == VerificationMethod.FACE.value)).label("face_verified"),
           _count(and_(_billed, _v.c.verified_by == VerificationMethod.CODE.value)).label("code_verified"),
           _count(_unverified).label("unverified"),
           _count(_v.c.state == _CONFIRMED).label("patient_confirmed"),
           _count(_disputed).label("disputed"),
           # core.model.patient_answer(...) is NONE, counted in SQL
           _count(and_(_billed, _v.c.state.not_in([_CONFIRMED, _DISPUTED]),
                       _v.c.attended_claim_at.is_(None))).label("no_answer"),
           _count(~_billed).label("cancelled"),
           _count(and_(_billed, or_(_p.c.chat_id.is_(None), _p.c.chat_blocked))).label("unreachable"),
           _count(and_(_billed, _v.c.registered_late)).label("registered_late"),
           _count(and_(_billed, FRESH)).label("fresh_reference"),
           _c.c.name.label("clinic_name"),
           select(func.count()).select_from(_pc).where(_DISPUTED_IN_DAY).scalar_subquery().label("disputed_changes"))
    .join(_d, _d.c.id == _v.c.doctor_id).join(_p, _p.c.id == _v.c.patient_id).join(_c, _c.c.id == _v.c.clinic_id)
    .where(_DAY).group_by(_v.c.doctor_id, _d.c.full_name, _c.c.name))
_DIGEST_VISITS = (
    select(_v.c.id, _v.c.start_at, _v.c.doctor_id, _v.c.mode, _v.c.service_code, _v.c.state,
           _v.c.verified_by, _v.c.attended_claim_at, _v.c.dispute_reason,
           _d.c.full_name.label("doctor_name"), _p.c.full_name.label("patient_name"), _p.c.iin,
           _p.c.chat_id, _p.c.chat_blocked, _v.c.created_at, _v.c.registered_late, _v.c.verified_at,
           _v.c.verified_enrolment_id, ENROLLED_AT.label("enrolled_at"), FRESH.label("fresh_reference"))
    .join(_d, _d.c.id == _v.c.doctor_id).join(_p, _p.c.id == _v.c.patient_id).where(_DAY)
    .order_by(_v.c.start_at, _v.c.id))
_DIGEST_FLAGGED = _DIGEST_VISITS.where(or_(_unverified, _disputed, FRESH))
_DISPUTED_CHANGES = (select(_pc.c.id, _pc.c.kind, _pc.c.patient_id, _pc.c.actor, _pc.c.at, _pc.c.disputed_at,
                            _p.c.full_name, _p.c.iin)
                     .join(_p, _p.c.id == _pc.c.patient_id).where(_DISPUTED_IN_DAY)
                     .order_by(_pc.c.disputed_at, _pc.c.id))
# A visit as a chat lists it: with the names of its clinic, doctor and patient, and whether the patient is reachable.
_VISIT_LINES = (select(_v.c.id, _v.c.clinic_id, _v.c.doctor_id, _v.c.start_at, _v.c.mode, _v.c.state,
                       _v.c.verified_by, _v.c.answered_at, _v.c.attended_claim_at, _c.c.name.label("clinic_name"),
                       _d.c.full_name.label("doctor_name"), _p.c.full_name.label("patient_name"), _p.c.chat_id,
                       _p.c.chat_blocked)
                .join(_d, _d.c.id == _v.c.doctor_id).join(_p, _p.c.id == _v.c.patient_id)
                .join(_c, _c.c.id == _v.c.clinic_id))


class Queries:
    def __init__(self, conn: AsyncConnection):
        self.conn = conn

    # --- the daily digest: one clinic, visits starting in [start, end) ----------------------------------------

    async def digest_counts(self, clinic_id: int, start: dt.datetime, end: dt.datetime) -> list[AnyRow]:
        """One row per doctor with a visit that day, carrying every count the digest's totals add up, and on each
        the clinic's name and how many changes its patients disputed that day (no row: no visit that day)."""
        return list((await self.conn.execute(_DIGEST_COUNTS, {"clinic": clinic_id, "start": start, "end": end})).all())

    async def digest_visits(self, clinic_id: int, start: dt.datetime, end: dt.datetime, *,
                            flagged_only: bool = False) -> list[AnyRow]:
        """The day's visits; ``flagged_only``: unverified, disputed, or verified against a fresh reference."""
        stmt = _DIGEST_FLAGGED if flagged_only else _DIGEST_VISITS
        return list((await self.conn.execute(stmt, {"clinic": clinic_id, "start": start, "end": end})).all())

    async def disputed_changes(self, clinic_id: int, start: dt.datetime, end: dt.datetime) -> list[AnyRow]:
        """Changes to the clinic's patients that the patients disputed in [start, end)."""
        return list((await self.conn.execute(_DISPUTED_CHANGES, {"clinic": clinic_id, "start": start,
                                                                 "end": end})).all())

    # --- chats ------------------------------------------------------------------------------------------------

    async def chat_user(self, chat_id: int) -> AnyRow | None:
        """The chat's own settings (language, stopped), or None for a chat that never chose or stopped."""
        return (await self.conn.execute(select(t.chat_users.c.language, t.chat_users.c.stopped)
                                        .where(t.chat_users.c.chat_id == chat_id))).first()

    async def clinic_names(self, clinic_ids: set[int]) -> dict[int, str]:
        if not clinic_ids:
            return {}
        rows = (await self.conn.execute(select(_c.c.id, _c.c.name).where(_c.c.id.in_(clinic_ids)))).all()
        return {r.id: r.name for r in rows}

    async def patient_visit_lines(self, patient_ids: list[int], since: dt.datetime,
                                  until: dt.datetime) -> list[AnyRow]:
        """The patients' visits starting in [since, until), newest first."""
        return list((await self.conn.execute(_VISIT_LINES.where(and_(
            _v.c.patient_id.in_(patient_ids), _v.c.start_at >= since, _v.c.start_at < until))
            .order_by(_v.c.start_at.desc(), _v.c.id.desc()))).all())

    async def online_scheduled_lines(self, doctor_ids: list[int], start: dt.datetime,
                                     end: dt.datetime) -> list[AnyRow]:
        """The doctors' online consultations starting in [start, end) that still wait for verification."""
        return list((await self.conn.execute(_VISIT_LINES.where(and_(
            _v.c.doctor_id.in_(doctor_ids), _v.c.mode == VisitMode.ONLINE.value, _v.c.state == _SCHEDULED,
            _v.c.start_at >= start, _v.c.start_at < end)).order_by(_v.c.start_at, _v.c.id))).all())

    async def visit_line(self, visit_id: int) -> AnyRow | None:
        return (await self.conn.execute(_VISIT_LINES.where(_v.c.id == visit_id))).first()
