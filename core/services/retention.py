"""Retention: what is kept, for how long, and the purge that removes the rest by itself (issue 16).

Run by the bot's scheduler (daily) and by operators (``rastau purge [--dry-run]``). Each kind has its period in
settings (core/config.py, with its reason in .env.example and docs/privacy.md):

- ``outbox_payload``: delivered (or given up) chat messages older than RASTAU_RETAIN_OUTBOX_DAYS forget their payload
  (chat ids, visit details) and Telegram message id; the row stays, so "this message was sent" stays;
- ``idempotency``: stored API responses older than RASTAU_RETAIN_IDEMPOTENCY_HOURS;
- ``capture_sessions``: capture sessions that expired more than RASTAU_RETAIN_CAPTURE_DAYS ago (the visit's own
  events keep what came of them);
- ``web_sessions``: the web dashboard's sign-in links a day after they expired, its sessions a month after, but each
  user's newest (core/services/web_sessions.py's rule, which the dashboard also applies when links are asked for);
- ``billing_reduced``: a patient registered more than RASTAU_RETAIN_BILLING_YEARS ago with no visit since keeps
  only what the payer must: the row the visits point to, the name, the IIN reduced to birth date and sex
  (core.iin.reduce_iin); the phone, the chat, the channel addresses and any face are gone. Visits and their
  evidence stay whole;
- ``face_idle``: the face references of a patient with no visit for RASTAU_RETAIN_FACE_IDLE_DAYS: their key is
  destroyed, the ciphertexts emptied, and the patient told (a ``face_revoked`` change by ``retention``);
- ``orphan_keys``: patient keys that seal nothing any more (a withdrawal or a retention interrupted half-way);
- ``resealed``: references still under the environment's key re-sealed under their patient's own key (not a purge
  of data, but it is what makes withdrawal reach references stored before revision 0010).

Visits, their events and the audit log are not touched: the audit chain keeps every hash, so ``rastau
audit-verify`` holds after any purge. Every run that removed something writes one audit row (counts, never
contents) and adds its counts to purge_totals, which /metrics reports. A dry run counts and changes nothing.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from core.iin import reduce_iin
from core.services import Context
from core.services.access import Caller
from core.services.face_keys import reseal_legacy
from core.services.patient_changes import FACE_REVOKED, record_change
from core.services.web_sessions import LINKS_KEPT, SESSIONS_KEPT

KINDS = ("outbox_payload", "idempotency", "capture_sessions", "web_sessions", "face_idle", "billing_reduced",
         "orphan_keys", "resealed")
RETENTION = Caller("retention")
RESEAL_PER_RUN = 500


@dataclass(frozen=True)
class PurgeReport:
    dry_run: bool
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


async def purge(ctx: Context, *, dry_run: bool = False) -> PurgeReport:
    s, now = ctx.settings, ctx.clock.now()
    counts = dict.fromkeys(KINDS, 0)
    face_before = now - dt.timedelta(days=s.retain_face_idle_days)
    billing_before = now - dt.timedelta(days=365 * s.retain_billing_years + s.retain_billing_years // 4)
    async with ctx.uow(read_only=True) as uow:
        idle = await uow.retention.idle_enrolled(face_before)
        reduce = await uow.retention.to_reduce(billing_before)
    if not dry_run:
        await ctx.keys.destroy(idle + [pid for pid, _ in reduce])  # first: nothing of theirs opens from here on
    async with ctx.uow(read_only=dry_run) as uow:
        counts["outbox_payload"] = await uow.retention.outbox(now - dt.timedelta(days=s.retain_outbox_days), dry_run)
        counts["idempotency"] = await uow.retention.idempotency(
            now - dt.timedelta(hours=s.retain_idempotency_hours), dry_run)
        counts["capture_sessions"] = await uow.retention.capture_sessions(
            now - dt.timedelta(days=s.retain_capture_days), dry_run)
        counts["web_sessions"] = await uow.retention.web_sessions(now - LINKS_KEPT, now - SESSIONS_KEPT, dry_run)
        counts["face_idle"] = len(idle)
        counts["billing_reduced"] = len(reduce)
        if not dry_run:
            for patient_id in idle:
                patient = await uow.patients.get(patient_id)
                shredded = await uow.templates.shred([patient_id], now)
                change = await record_change(uow, patient, FACE_REVOKED, RETENTION, now, patient.chat_id)
                await uow.audit.append(now, RETENTION.actor, "patient.revoke_enrolment", f"patient:{patient_id}",
                                       {"revoked": shredded, "change": change, "idle_days": s.retain_face_idle_days},
                                       clinic_id=patient.clinic_id)
            for patient_id, iin in reduce:
                patient = await uow.patients.get(patient_id)
                await uow.templates.shred([patient_id], now)
                await uow.retention.reduce_patient(patient_id, reduce_iin(iin, patient_id), now)
                await uow.audit.append(now, RETENTION.actor, "patient.reduce", f"patient:{patient_id}",
                                       {"billing_years": s.retain_billing_years}, clinic_id=patient.clinic_id)
            await uow.commit()
    keyed = await ctx.keys.patients()
    async with ctx.uow(read_only=True) as uow:
        orphans = sorted(set(keyed) - await uow.retention.patients_with_sealed(keyed))
        legacy = len(await uow.templates.legacy(RESEAL_PER_RUN))
    if dry_run:
        counts["orphan_keys"], counts["resealed"] = len(orphans), legacy
        return PurgeReport(True, counts)
    # a key made for an enrolment still being written has no reference yet: only keys older than a minute go
    counts["orphan_keys"] = await ctx.keys.destroy(await ctx.keys.older_than(orphans, now - dt.timedelta(minutes=1)))
    counts["resealed"] = await reseal_legacy(ctx, RESEAL_PER_RUN)
    if any(counts.values()):
        async with ctx.uow() as uow:
            await uow.audit.append(now, RETENTION.actor, "retention.purge", "retention", dict(counts), clinic_id=None)
            await uow.retention.add_totals(counts, now)
            await uow.commit()
    return PurgeReport(False, counts)


async def purge_totals(ctx: Context) -> dict[str, tuple[int, int]]:
    """kind -> (rows removed or reduced in all, runs that removed some), for /metrics."""
    async with ctx.uow(read_only=True) as uow:
        return {r.kind: (int(r.rows), int(r.runs)) for r in await uow.record.purge_totals()}
