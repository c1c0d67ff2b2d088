"""The auditors' daily summary: one Asia/Almaty day across the clinics an auditor reads (counts per clinic and the
day's red flags), and the outbox rows that carry it to every linked auditor. The bot renders it in the auditor's
language; the counts are the admins' digest totals and the flags are :func:`core.services.flags.find_flags`, so an
auditor and a clinic never read two versions of one day.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from core.model import OutboxKind, OutboxMessage, Recipient
from core.services import Context
from core.services.digest import build_digest
from core.services.flags import Flag, find_flags


@dataclass(frozen=True)
class ClinicDay:
    clinic_id: int
    clinic_name: str
    visits: int
    face_live: int
    face: int  # one frame from the clinic's system: the weaker face evidence
    code: int
    unverified: int
    disputed: int
    no_answer: int
    registered_late: int
    no_channel: int = 0  # issue 14: of no_answer, visits whose patient nobody could ask (no working channel)


@dataclass(frozen=True)
class AuditorSummary:
    auditor_id: int
    day: dt.date
    clinics: list[ClinicDay]  # every clinic in scope, by id, those without visits too
    flags: list[Flag]  # the day's flags of those clinics
    doctor_names: dict[int, str]  # of the doctors the flags name

    def clinic_name(self, clinic_id: int) -> str:
        return next((c.clinic_name for c in self.clinics if c.clinic_id == clinic_id), str(clinic_id))


async def build_auditor_summary(ctx: Context, auditor_id: int, day: dt.date) -> AuditorSummary:
    """The auditor's clinics as they are now (a removed clinic from scope is left out at once)."""
    async with ctx.uow(read_only=True) as uow:
        auditor = await uow.auditors.get(auditor_id)
        if auditor.all_clinics:
            clinic_ids = [c.id for c in await uow.clinics.list() if c.id is not None]
        else:
            clinic_ids = list(auditor.clinic_ids)
    clinics = []
    for clinic_id in sorted(clinic_ids):
        digest = await build_digest(ctx, clinic_id, day, with_rows=False)
        tot = digest.totals
        clinics.append(ClinicDay(clinic_id, digest.clinic_name, tot["visits"], tot["face_live_verified"],
                                 tot["face_verified"], tot["code_verified"], tot["unverified"], tot["disputed"],
                                 tot["no_answer"], tot["registered_late"], tot.get("no_channel", 0)))
    scope = set(clinic_ids)
    flags = [f for f in await find_flags(ctx, day, day) if f.clinic_id in scope] if scope else []
    async with ctx.uow(read_only=True) as uow:
        doctors = {d: (await uow.doctors.get(d)).full_name for d in {f.doctor_id for f in flags} if d is not None}
    return AuditorSummary(auditor_id, day, clinics, flags, doctors)


def summary_dedupe_key(day: dt.date, auditor_id: int) -> str:
    return f"auditor-summary:{day.isoformat()}:{auditor_id}"


async def queue_auditor_summaries(ctx: Context, day: dt.date) -> int:
    """One ``auditor_summary`` outbox row per live auditor with a chat; a repeat (restart, catch-up, a second bot)
    adds nothing: the dedupe key names the day and the auditor."""
    now = ctx.clock.now()
    queued = 0
    async with ctx.uow() as uow:
        for auditor in await uow.auditors.linked():
            queued += await uow.outbox.add(OutboxMessage(
                kind=OutboxKind.AUDITOR_SUMMARY, recipient_kind=Recipient.AUDITOR, recipient_id=auditor.id,
                due_at=now, payload={"day": day.isoformat()}, dedupe_key=summary_dedupe_key(day, auditor.id)),
                now) is not None
        await uow.commit()
    return queued
