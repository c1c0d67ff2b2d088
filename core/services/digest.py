"""The clinic admins' daily digest: what happened to each visit of one local day, and a CSV of it; and the daily
outbox rows that carry it. The server serves it as data; the bot renders it in the admin's language."""
from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass, field
from typing import Any

from core import csvfile
from core.clock import ALMATY, local_day_bounds, to_local
from core.config import Settings
from core.db.repositories import AnyRow
from core.iin import mask_iin
from core.model import (
    EVIDENCE_STRENGTH,
    OutboxKind,
    OutboxMessage,
    PatientAnswer,
    Recipient,
    VerificationMethod,
    VisitState,
    patient_answer,
)
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
    evidence_strength: str | None  # "live" (face_live), "single_frame" (face: the weaker kind), "code"
    answer: str  # "confirmed" | "disputed" | "claimed_attended" | "none"
    dispute_reason: str | None
    patient_reachable: bool
    # when the evidence was made relative to the appointment (Asia/Almaty), and what a face match rested on
    registered_at: dt.datetime
    registered_late: bool  # registered after its window had closed: it could collect no evidence
    verified_at: dt.datetime | None
    verified_enrolment_id: int | None
    enrolled_at: dt.datetime | None
    fresh_reference: bool  # matched a reference enrolled < 24 h before, the patient with no chat to hear of it
    # issue 14: "delivered" (WhatsApp or SMS said the code arrived), "sent" (out, arrival unknown), None (no code sent)
    code_delivery: str | None = None


@dataclass(frozen=True)
class EnrolmentDispute:
    """A change to a patient's face, phone or consent that the patient says they did not ask for."""
    change_id: int
    kind: str
    patient_id: int
    patient_name: str
    iin_masked: str
    actor: str  # the key ("key:<prefix>") or tool that made the change
    changed_at_local: dt.datetime
    disputed_at_local: dt.datetime


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
    flagged: list[DigestRow]  # unverified, disputed, or verified against a fresh reference
    rows: list[DigestRow] = field(repr=False)
    enrolment_disputes: list[EnrolmentDispute] = field(default_factory=list)  # disputed on this day

    @property
    def all_confirmed(self) -> bool:
        """Nothing for an admin to look at: no unverified, disputed or unanswered visits, no disputed changes."""
        return (not self.flagged and self.totals["no_answer"] == 0 and self.totals["unreachable"] == 0
                and not self.enrolment_disputes)

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csvfile.writer(out)
        writer.writerow(["visit_id", "start_local", "doctor", "patient", "iin", "mode", "service_code", "state",
                         "verified_by", "evidence_strength", "patient_answer", "dispute_reason", "registered_at",
                         "registered_late",
                         "verified_at", "enrolment_id", "enrolled_at", "fresh_reference", "code_delivery"])
        for r in self.rows:
            writer.writerow([r.visit_id, r.start_local.strftime("%Y-%m-%d %H:%M"), r.doctor_name, r.patient_name,
                             r.iin_masked, r.mode, r.service_code, r.state, r.verified_by or "",
                             r.evidence_strength or "", r.answer,
                             r.dispute_reason or "", _minute(r.registered_at), _flag(r.registered_late),
                             _minute(r.verified_at), r.verified_enrolment_id or "", _minute(r.enrolled_at),
                             _flag(r.fresh_reference), r.code_delivery or ""])
        if self.enrolment_disputes:  # a second table under the visits: changes the patients say they did not ask for
            writer.writerow([])
            writer.writerow(["change_id", "kind", "changed_at_local", "disputed_at_local", "actor", "patient", "iin"])
            for d in self.enrolment_disputes:
                writer.writerow([d.change_id, d.kind, d.changed_at_local.strftime("%Y-%m-%d %H:%M"),
                                 d.disputed_at_local.strftime("%Y-%m-%d %H:%M"), d.actor, d.patient_name,
                                 d.iin_masked])
        return out.getvalue()


def _minute(moment: dt.datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else ""


def _flag(value: bool) -> str:
    return "true" if value else "false"


TOTAL_KEYS = ("visits", "face_verified", "face_live_verified", "code_verified", "unverified", "patient_confirmed",
              "disputed", "no_answer", "cancelled", "unreachable", "registered_late", "fresh_reference",
              "no_channel")  # issue 14: of no_answer, those nobody could ask (no working channel)


NO_CHANNEL = "no_channel"


def channels_on(settings: Settings) -> dict[str, bool]:
    """Which of the patients' other channels are on, for the queries that say who could be asked (issue 14)."""
    return {"sms": settings.sms_enabled, "whatsapp": settings.whatsapp_enabled}


def _dispute(r: AnyRow) -> EnrolmentDispute:
    return EnrolmentDispute(change_id=r.id, kind=r.kind, patient_id=r.patient_id, patient_name=r.full_name,
                            iin_masked=mask_iin(r.iin), actor=r.actor, changed_at_local=to_local(r.at),
                            disputed_at_local=to_local(r.disputed_at))


def _row(row: AnyRow) -> DigestRow:
    r = row._mapping  # by key: a third of the cost of a Row's attributes, for the dozens of rows each digest builds
    return DigestRow(visit_id=r["id"], start_local=to_local(r["start_at"]), doctor_id=r["doctor_id"],
                     doctor_name=r["doctor_name"], patient_name=r["patient_name"], iin_masked=mask_iin(r["iin"]),
                     mode=r["mode"], service_code=r["service_code"], state=r["state"], verified_by=r["verified_by"],
                     evidence_strength=EVIDENCE_STRENGTH[VerificationMethod(r["verified_by"])]
                     if r["verified_by"] else None,
                     answer=_answer(r),
                     dispute_reason=r["dispute_reason"],
                     patient_reachable=bool(r["reachable"]),
                     registered_at=to_local(r["created_at"]), registered_late=r["registered_late"],
                     verified_at=_local(r["verified_at"]), verified_enrolment_id=r["verified_enrolment_id"],
                     enrolled_at=_local(r["enrolled_at"]), fresh_reference=bool(r["fresh_reference"]),
                     code_delivery=r["code_delivery"])


def _answer(r: Any) -> str:
    """The patient's answer; an unanswered visit whose patient has no working channel is "no_channel" (issue 14):
    nobody could ask, which is not the same as no answer."""
    said = patient_answer(VisitState(r["state"]), r["attended_claim_at"]).value
    return NO_CHANNEL if said == PatientAnswer.NONE.value and not r["reachable"] else said


def _local(moment: dt.datetime | None) -> dt.datetime | None:
    return to_local(moment) if moment else None


async def build_digest(ctx: Context, clinic_id: int, day: dt.date, *, with_rows: bool = True) -> Digest:
    """One clinic, one Asia/Almaty calendar day, in one read (a snapshot on SQLite; on PostgreSQL, READ COMMITTED, a
    snapshot per statement): counts by SQL aggregate, the flagged visits (unverified, disputed, or verified against a
    fresh reference), the changes patients disputed that day, and every row only when asked (the CSV needs them, a
    summary does not). A query that the counts show would find nothing is not made."""
    start, end = local_day_bounds(day, ALMATY)
    on = channels_on(ctx.settings)
    async with ctx.uow(read_only=True) as uow:
        counts = await uow.queries.digest_counts(clinic_id, start, end, **on)
        clinic_name = counts[0].clinic_name if counts else (await uow.clinics.get(clinic_id)).name
        # the counts see every flagged visit: a fresh-reference match is never cancelled (only scheduled visits are)
        flagged_rows = (await uow.queries.digest_visits(clinic_id, start, end, flagged_only=True, **on)
                        if any(c.unverified or c.disputed or c.fresh_reference for c in counts) else [])
        all_rows = await uow.queries.digest_visits(clinic_id, start, end, **on) if with_rows and counts else []
        disputes = (await uow.queries.disputed_changes(clinic_id, start, end)
                    if not counts or counts[0].disputed_changes else [])
    totals = {key: sum(getattr(c, key) for c in counts) for key in TOTAL_KEYS}
    per_doctor = [DoctorCounts(c.doctor_id, c.full_name, total=c.visits,
                               verified=c.face_verified + c.face_live_verified + c.code_verified,
                               unverified=c.unverified,
                               disputed=c.disputed) for c in counts if c.visits]
    return Digest(clinic_id=clinic_id, clinic_name=clinic_name, day=day, totals=totals,
                  per_doctor=sorted(per_doctor, key=lambda c: c.doctor_name),
                  flagged=[_row(r) for r in flagged_rows], rows=[_row(r) for r in all_rows],
                  enrolment_disputes=[_dispute(r) for r in disputes])


def digest_dedupe_key(clinic_id: int, day: dt.date, admin_id: int) -> str:
    return f"digest:{clinic_id}:{day.isoformat()}:{admin_id}"


async def queue_daily_digests(ctx: Context, day: dt.date) -> int:
    """One ``daily_digest`` outbox row per admin of every clinic for this local day. A repeat (restart,
    catch-up, a second bot instance) adds nothing: the dedupe key names clinic, day and admin."""
    now = ctx.clock.now()
    queued = 0
    async with ctx.uow() as uow:
        for clinic in await uow.clinics.list():
            assert clinic.id is not None  # read from storage, as every admin below
            for admin in await uow.admins.list_by_clinic(clinic.id):
                assert admin.id is not None
                added = await uow.outbox.add(OutboxMessage(
                    kind=OutboxKind.DAILY_DIGEST, recipient_kind=Recipient.ADMIN, recipient_id=admin.id, due_at=now,
                    payload={"clinic_id": clinic.id, "day": day.isoformat()},
                    dedupe_key=digest_dedupe_key(clinic.id, day, admin.id)), now)
                queued += added is not None
        await uow.commit()
    return queued
