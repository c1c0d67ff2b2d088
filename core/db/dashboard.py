"""The web dashboard's storage (issue 13, dashboard-data): the reads behind the disputes queue, a doctor's scorecard
and the clinics side by side, and the append-only dispute reviews. Kept beside core.db.queries and
core.db.repositories (same rules: rows by column label, no service builds a statement), in a module of its own.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ColumnElement, and_, func, insert, or_, select, true
from sqlalchemy.ext.asyncio import AsyncConnection

from core.db import tables as t
from core.db.queries import _CONFIRMED, _DISPUTED, _SCHEDULED, _billed, _c, _count, _d, _LocalDay, _p, _pc, _v
from core.db.repositories import AnyRow, _Repo
from core.model import VerificationMethod

_dr = t.dispute_reviews
_ANSWERED = _v.c.state.in_([_CONFIRMED, _DISPUTED])


def _in_clinics(column: ColumnElement[Any], clinic_ids: frozenset[int] | None) -> ColumnElement[bool]:
    """``column`` among ``clinic_ids`` (None: every clinic)."""
    return column.in_(sorted(clinic_ids)) if clinic_ids is not None else true()
def _after(moment: ColumnElement[Any], key: ColumnElement[Any],
           after: tuple[dt.datetime, int] | None) -> ColumnElement[bool]:
    """(moment, key) after ``after`` in (moment, key) order (everything when None)."""
    if after is None:
        return true()
    return or_(moment > after[0], and_(moment == after[0], key > after[1]))


class DashboardQueries:
    """The dashboard's reads. A scope is the clinics a caller reads (None: every clinic); the service decides it."""

    def __init__(self, conn: AsyncConnection):
        self.conn = conn

    async def disputed_visits(self, clinic_ids: frozenset[int] | None, *, limit: int,
                              after: tuple[dt.datetime, int] | None = None,
                              unreviewed_only: bool = False) -> list[AnyRow]:
        """Visits their patients said they were not at, the oldest answer first (then by id), with clinic, doctor
        and patient; ``after`` (answered_at, id): only those after it in that order."""
        stmt = (select(_v.c.id, _v.c.clinic_id, _c.c.name.label("clinic_name"), _v.c.doctor_id,
                       _d.c.full_name.label("doctor_name"), _v.c.patient_id, _p.c.iin, _v.c.start_at, _v.c.mode,
                       _v.c.service_code, _v.c.verified_by, _v.c.answered_at, _v.c.dispute_reason)
                .join(_d, _d.c.id == _v.c.doctor_id).join(_p, _p.c.id == _v.c.patient_id)
                .join(_c, _c.c.id == _v.c.clinic_id)
                .where(_v.c.state == _DISPUTED, _in_clinics(_v.c.clinic_id, clinic_ids),
                       _after(_v.c.answered_at, _v.c.id, after))
                .order_by(_v.c.answered_at, _v.c.id).limit(limit))
        if unreviewed_only:
            stmt = stmt.where(~select(_dr.c.id).where(_dr.c.visit_id == _v.c.id).exists())
        return list((await self.conn.execute(stmt)).all())

    async def disputed_changes(self, clinic_ids: frozenset[int] | None, *, limit: int,
                               after: tuple[dt.datetime, int] | None = None,
                               unreviewed_only: bool = False) -> list[AnyRow]:
        """Changes to patients' face, phone or consent their patients said were not theirs, oldest dispute first
        (then by id); ``after`` (disputed_at, id): only those after it in that order."""
        stmt = (select(_pc.c.id, _pc.c.clinic_id, _c.c.name.label("clinic_name"), _pc.c.kind, _pc.c.patient_id,
                       _p.c.iin, _pc.c.actor, _pc.c.at, _pc.c.disputed_at)
                .join(_p, _p.c.id == _pc.c.patient_id).join(_c, _c.c.id == _pc.c.clinic_id)
                .where(_pc.c.disputed_at.is_not(None), _in_clinics(_pc.c.clinic_id, clinic_ids),
                       _after(_pc.c.disputed_at, _pc.c.id, after))
                .order_by(_pc.c.disputed_at, _pc.c.id).limit(limit))
        if unreviewed_only:
            stmt = stmt.where(~select(_dr.c.id).where(_dr.c.change_id == _pc.c.id).exists())
        return list((await self.conn.execute(stmt)).all())

    async def dispute_counts(self, clinic_ids: frozenset[int] | None) -> tuple[int, int]:
        """How many disputes (visits and changes) the clinics have, and how many of them no one has reviewed."""
        reviewed_visit = select(_dr.c.id).where(_dr.c.visit_id == _v.c.id).exists()
        reviewed_change = select(_dr.c.id).where(_dr.c.change_id == _pc.c.id).exists()
        visits = (await self.conn.execute(select(func.count(), _count(~reviewed_visit)).where(
            _v.c.state == _DISPUTED, _in_clinics(_v.c.clinic_id, clinic_ids)))).one()
        changes = (await self.conn.execute(select(func.count(), _count(~reviewed_change)).where(
            _pc.c.disputed_at.is_not(None), _in_clinics(_pc.c.clinic_id, clinic_ids)))).one()
        return int(visits[0]) + int(changes[0]), int(visits[1]) + int(changes[1])

    async def reviews(self, visit_ids: list[int], change_ids: list[int]) -> list[AnyRow]:
        """The reviews of these disputes, oldest first."""
        if not visit_ids and not change_ids:
            return []
        stmt = (select(_dr).where(or_(_dr.c.visit_id.in_(visit_ids), _dr.c.change_id.in_(change_ids)))
                .order_by(_dr.c.at, _dr.c.id))
        return list((await self.conn.execute(stmt)).all())

    async def doctor_days(self, doctor_id: int, start: dt.datetime, end: dt.datetime) -> list[AnyRow]:
        """Per Asia/Almaty day with a billed visit of the doctor in [start, end): how each was verified and what
        its patient answered."""
        day = _LocalDay(_v.c.start_at)
        stmt = (select(day.label("day"), func.count().label("visits"),
                       _count(_v.c.verified_by == VerificationMethod.FACE_LIVE.value).label("face_live"),
                       _count(_v.c.verified_by == VerificationMethod.FACE.value).label("face"),
                       _count(_v.c.verified_by == VerificationMethod.CODE.value).label("code"),
                       _count(and_(_v.c.verified_by.is_(None), _v.c.state != _SCHEDULED)).label("unverified"),
                       _count(_v.c.state == _SCHEDULED).label("scheduled"),
                       _count(_v.c.state == _CONFIRMED).label("confirmed"),
                       _count(_v.c.state == _DISPUTED).label("disputed"),
                       _count(and_(~_ANSWERED, _v.c.attended_claim_at.is_not(None))).label("claimed"),
                       _count(and_(~_ANSWERED, _v.c.attended_claim_at.is_(None))).label("no_answer"))
                .where(_v.c.doctor_id == doctor_id, _billed, _v.c.start_at >= start, _v.c.start_at < end)
                .group_by(day).order_by(day))
        return list((await self.conn.execute(stmt)).all())

    async def doctor_totals(self, clinic_id: int, start: dt.datetime, end: dt.datetime) -> list[AnyRow]:
        """Every doctor of the clinic (those without visits too), by name, with their billed visits in [start, end)
        and how many had no evidence, were verified by code, and were disputed."""
        counts = (select(_v.c.doctor_id, func.count().label("visits"),
                         _count(_v.c.verified_by == VerificationMethod.CODE.value).label("code"),
                         _count(and_(_v.c.verified_by.is_(None), _v.c.state != _SCHEDULED)).label("unverified"),
                         _count(_v.c.state == _DISPUTED).label("disputed"))
                  .where(_v.c.clinic_id == clinic_id, _billed, _v.c.start_at >= start, _v.c.start_at < end)
                  .group_by(_v.c.doctor_id).subquery())
        stmt = (select(_d.c.id, _d.c.full_name, func.coalesce(counts.c.visits, 0).label("visits"),
                       func.coalesce(counts.c.code, 0).label("code"),
                       func.coalesce(counts.c.unverified, 0).label("unverified"),
                       func.coalesce(counts.c.disputed, 0).label("disputed"))
                .select_from(_d.outerjoin(counts, counts.c.doctor_id == _d.c.id))
                .where(_d.c.clinic_id == clinic_id).order_by(_d.c.full_name, _d.c.id))
        return list((await self.conn.execute(stmt)).all())

    async def clinic_totals(self, clinic_ids: frozenset[int] | None, start: dt.datetime,
                            end: dt.datetime) -> list[AnyRow]:
        """Every clinic in scope (those without visits too), by id, with its billed visits in [start, end) and how
        many had no evidence, were verified by code, and were disputed."""
        counts = (select(_v.c.clinic_id, func.count().label("visits"),
                         _count(_v.c.verified_by == VerificationMethod.CODE.value).label("code"),
                         _count(and_(_v.c.verified_by.is_(None), _v.c.state != _SCHEDULED)).label("unverified"),
                         _count(_v.c.state == _DISPUTED).label("disputed"))
                  .where(_billed, _v.c.start_at >= start, _v.c.start_at < end,
                         _in_clinics(_v.c.clinic_id, clinic_ids))
                  .group_by(_v.c.clinic_id).subquery())
        stmt = (select(_c.c.id, _c.c.name, func.coalesce(counts.c.visits, 0).label("visits"),
                       func.coalesce(counts.c.code, 0).label("code"),
                       func.coalesce(counts.c.unverified, 0).label("unverified"),
                       func.coalesce(counts.c.disputed, 0).label("disputed"))
                .select_from(_c.outerjoin(counts, counts.c.clinic_id == _c.c.id))
                .where(_in_clinics(_c.c.id, clinic_ids)).order_by(_c.c.id))
        return list((await self.conn.execute(stmt)).all())

    async def visit_briefs(self, visit_ids: list[int]) -> list[AnyRow]:
        """The named visits in id order: when, what, how verified and answered (a flag's visits on a scorecard)."""
        if not visit_ids:
            return []
        stmt = (select(_v.c.id, _v.c.clinic_id, _v.c.doctor_id, _v.c.patient_id, _p.c.iin, _v.c.start_at, _v.c.mode,
                       _v.c.service_code, _v.c.state, _v.c.verified_by, _v.c.attended_claim_at,
                       _v.c.registered_late)
                .join(_p, _p.c.id == _v.c.patient_id).where(_v.c.id.in_(visit_ids)).order_by(_v.c.id))
        return list((await self.conn.execute(stmt)).all())


class DisputeReviewRepo(_Repo):
    """Append-only: there is no update and no delete; a changed mind is a later review."""

    async def add(self, *, clinic_id: int, visit_id: int | None, change_id: int | None, reviewer_kind: str,
                  reviewer_id: int, actor: str, outcome: str, note: str, at: dt.datetime) -> int:
        res = await self.conn.execute(insert(t.dispute_reviews).values(
            clinic_id=clinic_id, visit_id=visit_id, change_id=change_id, reviewer_kind=reviewer_kind,
            reviewer_id=reviewer_id, actor=actor, outcome=outcome, note=note, at=at)
            .returning(t.dispute_reviews.c.id))
        review_id: int = res.scalar_one()
        return review_id
