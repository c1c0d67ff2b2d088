"""The clinic admins' daily digest: what happened to each visit of one local day, and a CSV of it.
The server serves it as data; the bot renders it in the admin's language."""
from __future__ import annotations

import csv
import datetime as dt
import io
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import and_, select

from core.clock import ALMATY, local_day_bounds, to_local
from core.db import tables as t
from core.iin import mask_iin
from core.model import VisitState
from core.services import Context


@dataclass(frozen=True)
class DigestRow:
    visit_id: int
    start_local: dt.datetime
    doctor_id: int
    doctor_name: str
    patient_name: str
    iin_masked: str
    mode: str
    service_code: str
    state: str
    verified_by: str | None
    answer: str  # "confirmed" | "disputed" | "claimed_attended" | "none"
    dispute_reason: str | None
    patient_reachable: bool


@dataclass
class DoctorCounts:
    doctor_id: int
    doctor_name: str
    total: int = 0
    verified: int = 0
    unverified: int = 0
    disputed: int = 0


@dataclass
class Digest:
    clinic_id: int
    clinic_name: str
    day: dt.date
    totals: dict[str, int]
    per_doctor: list[DoctorCounts]
    flagged: list[DigestRow]  # unverified or disputed
    rows: list[DigestRow] = field(repr=False)

    @property
    def all_confirmed(self) -> bool:
        """Nothing for an admin to look at: no unverified, disputed or unanswered visits."""
        return not self.flagged and self.totals["no_answer"] == 0 and self.totals["unreachable"] == 0

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["visit_id", "start_local", "doctor", "patient", "iin", "mode", "service_code", "state",
                         "verified_by", "patient_answer", "dispute_reason"])
        for r in self.rows:
            writer.writerow([r.visit_id, r.start_local.strftime("%Y-%m-%d %H:%M"), r.doctor_name, r.patient_name,
                             r.iin_masked, r.mode, r.service_code, r.state, r.verified_by or "", r.answer,
                             r.dispute_reason or ""])
        return out.getvalue()


TOTAL_KEYS = ("visits", "face_verified", "code_verified", "unverified", "patient_confirmed", "disputed",
              "no_answer", "cancelled", "unreachable")


def _answer(row) -> str:
    if row.state == VisitState.PATIENT_CONFIRMED.value:
        return "confirmed"
    if row.state == VisitState.PATIENT_DISPUTED.value:
        return "disputed"
    if row.attended_claim_at is not None:
        return "claimed_attended"
    return "none"


async def build_digest(ctx: Context, clinic_id: int, day: dt.date) -> Digest:
    """One clinic, one Asia/Almaty calendar day: one indexed range query, then counting in memory."""
    start, end = local_day_bounds(day, ALMATY)
    v, d, p = t.visits, t.doctors, t.patients
    stmt = (select(v.c.id, v.c.start_at, v.c.doctor_id, v.c.mode, v.c.service_code, v.c.state, v.c.verified_by,
                   v.c.attended_claim_at, v.c.dispute_reason, d.c.full_name.label("doctor_name"),
                   p.c.full_name.label("patient_name"), p.c.iin, p.c.chat_id, p.c.chat_blocked)
            .join(d, d.c.id == v.c.doctor_id).join(p, p.c.id == v.c.patient_id)
            .where(and_(v.c.clinic_id == clinic_id, v.c.start_at >= start, v.c.start_at < end))
            .order_by(v.c.start_at, v.c.id))
    async with ctx.uow() as uow:
        clinic = await uow.clinics.get(clinic_id)
        result = (await uow.conn.execute(stmt)).all()
    totals: Counter = Counter({k: 0 for k in TOTAL_KEYS})
    doctors: dict[int, DoctorCounts] = {}
    rows, flagged = [], []
    for r in result:
        row = DigestRow(visit_id=r.id, start_local=to_local(r.start_at),
                        doctor_id=r.doctor_id, doctor_name=r.doctor_name, patient_name=r.patient_name,
                        iin_masked=mask_iin(r.iin), mode=r.mode, service_code=r.service_code, state=r.state,
                        verified_by=r.verified_by, answer=_answer(r), dispute_reason=r.dispute_reason,
                        patient_reachable=r.chat_id is not None and not r.chat_blocked)
        rows.append(row)
        if r.state == VisitState.CANCELLED.value:
            totals["cancelled"] += 1
            continue
        totals["visits"] += 1
        doc = doctors.setdefault(r.doctor_id, DoctorCounts(r.doctor_id, r.doctor_name))
        doc.total += 1
        if r.verified_by == "face":
            totals["face_verified"] += 1
        elif r.verified_by == "code":
            totals["code_verified"] += 1
        if r.verified_by:
            doc.verified += 1
        elif r.state != VisitState.SCHEDULED.value:
            totals["unverified"] += 1
            doc.unverified += 1
        if row.answer == "confirmed":
            totals["patient_confirmed"] += 1
        elif row.answer == "disputed":
            totals["disputed"] += 1
            doc.disputed += 1
        elif row.answer == "none":
            totals["no_answer"] += 1
        if not row.patient_reachable:
            totals["unreachable"] += 1
        if row.answer == "disputed" or (not r.verified_by and r.state != VisitState.SCHEDULED.value):
            flagged.append(row)
    return Digest(clinic_id=clinic_id, clinic_name=clinic.name, day=day, totals=dict(totals),
                  per_doctor=sorted(doctors.values(), key=lambda c: c.doctor_name), flagged=flagged, rows=rows)
