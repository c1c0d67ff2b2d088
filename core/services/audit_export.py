"""The auditors' evidence export: per visit what proves it happened, and the red flags, as signed files.

An auditor's read is on record before a byte of it leaves: one audit row per clinic read, in that clinic's chain
(who, which export, the period, how many visits, which patients), committed first; a read that cannot be recorded
is not served. Every page is a file signed on its own (core.signed_file) whose signature names the query, the cursor
it began at and the next one, so a page removed from a series shows as a gap in the cursors.

The patient appears as the internal id and the IIN masked to its last four digits; no name, phone or full IIN.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import secrets
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from core import csvfile
from core.clock import ALMATY, local_day_bounds, to_local
from core.db.repositories import AnyRow
from core.db.uow import UnitOfWork
from core.errors import InvalidValue, NotFound
from core.iin import mask_iin
from core.model import PatientAnswer, VisitState, patient_answer
from core.services import Context
from core.services.access import Caller, audited_clinics
from core.services.digest import channels_on
from core.services.flags import Flag, find_flags, flags_csv
from core.signed_file import JSONL, SignedWriter
from core.signing import Signer

DEFAULT_PAGE, MAX_PAGE = 1000, 5000
_CHUNK_ROWS = 200  # rows encoded per chunk written to the client
# What the patient said, as the export names it: the visit's answer, and for no answer whether anyone could ask
NO_ANSWER, NO_CHANNEL = "no_answer", "no_channel"
NO_EVIDENCE = "none"
# The flags a visit carries by itself (the red-flag rules, over many visits, are the flags export)
VISIT_FLAGS = ("registered_late", "fresh_reference")
VISIT_COLUMNS = ("visit_id", "clinic_id", "clinic", "doctor_id", "doctor", "patient_id", "patient", "mode",
                 "service_code", "start", "registered_at", "state", "evidence", "verified_at", "answer", "flags")
FLAG_COLUMNS = ("clinic_id", "doctor_id", "day", "kind", "description", "value", "threshold", "explanation",
                "visit_ids")


@dataclass(frozen=True)
class Period:
    """Asia/Almaty days, both included."""
    first_day: dt.date
    last_day: dt.date

    def __post_init__(self) -> None:
        if self.last_day < self.first_day:
            raise InvalidValue("the period ends before it begins: 'to' must be on or after 'from'")

    def bounds(self) -> tuple[dt.datetime, dt.datetime]:
        return local_day_bounds(self.first_day, ALMATY)[0], local_day_bounds(self.last_day, ALMATY)[1]

    def about(self) -> dict[str, str]:
        return {"from": self.first_day.isoformat(), "to": self.last_day.isoformat()}


@dataclass(frozen=True)
class SignedExport:
    """One page of an export: its rows, ready to be written out as a signed file."""
    kind: str  # "visits" | "flags"
    rows: list[dict[str, Any]]
    about: dict[str, Any]  # what the signature line says besides sizes and hashes: query, cursors, who, when
    next_cursor: int | None = None
    flags: list[Flag] = field(default_factory=list)

    def signed(self, fmt: str, signer: Signer) -> Iterator[bytes]:
        """The file in chunks, the signature line last: JSON lines, or CSV (UTF-8 with a byte-order mark)."""
        writer = SignedWriter(fmt)
        if fmt == JSONL:
            for start in range(0, len(self.rows), _CHUNK_ROWS):
                yield writer.add("".join(json.dumps(row, ensure_ascii=False) + "\n"
                                         for row in self.rows[start:start + _CHUNK_ROWS]).encode())
        elif self.kind == "flags":
            yield writer.add(("\ufeff" + flags_csv(self.flags)).encode())
        else:
            yield writer.add(("\ufeff" + _csv_lines([list(VISIT_COLUMNS)])).encode())
            for start in range(0, len(self.rows), _CHUNK_ROWS):
                yield writer.add(_csv_lines(_csv_row(row) for row in self.rows[start:start + _CHUNK_ROWS]).encode())
        yield writer.signature_line(signer, self.about)


def _csv_lines(rows: Iterable[list[Any]]) -> str:
    out = io.StringIO()
    csvfile.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL).writerows(rows)
    return out.getvalue()


def _csv_row(row: dict[str, Any]) -> list[Any]:
    return [";".join(row[c]) if c == "flags" else "" if row[c] is None else row[c] for c in VISIT_COLUMNS]


def _moment(value: dt.datetime | None) -> str | None:
    return to_local(value).isoformat(timespec="seconds") if value is not None else None


def _answer(row: AnyRow) -> str:
    said = patient_answer(VisitState(row.state), row.attended_claim_at)
    if said is PatientAnswer.NONE:
        return NO_ANSWER if row.reachable else NO_CHANNEL
    return str(said.value)


def _evidence(row: AnyRow) -> dict[str, Any]:
    return {"visit_id": row.id, "clinic_id": row.clinic_id, "clinic": row.clinic_name, "doctor_id": row.doctor_id,
            "doctor": row.doctor_name, "patient_id": row.patient_id, "patient": mask_iin(row.iin), "mode": row.mode,
            "service_code": row.service_code, "start": _moment(row.start_at), "registered_at": _moment(row.created_at),
            "state": row.state, "evidence": row.verified_by or NO_EVIDENCE, "verified_at": _moment(row.verified_at),
            "answer": _answer(row),
            "flags": [name for name in VISIT_FLAGS if getattr(row, name)]}


def _about(caller: Caller, kind: str, query: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    return {"export": secrets.token_hex(8), "kind": kind, "query": query, "requested_by": caller.actor,
            "signed_at": now.isoformat(timespec="seconds")}


async def _record_read(uow: UnitOfWork, caller: Caller, now: dt.datetime, action: str, about: dict[str, Any],
                       read: dict[int, dict[str, Any]], asked_clinic: int | None) -> None:
    """One audit row per clinic whose records were read, in that clinic's chain; a read that found nothing is
    recorded too (in the clinic's chain when one was named, else the operator's)."""
    base = {"export": about["export"], **about["query"]}
    if not read:
        await uow.audit.append(now, caller.actor, action, f"auditor:{caller.auditor_id}", {**base, "found": 0},
                               clinic_id=asked_clinic)
    for clinic_id in sorted(read):
        await uow.audit.append(now, caller.actor, action, f"auditor:{caller.auditor_id}", {**base, **read[clinic_id]},
                               clinic_id=clinic_id)


async def export_visits(ctx: Context, caller: Caller, period: Period, *, clinic_id: int | None = None,
                        cursor: int = 0, limit: int = DEFAULT_PAGE) -> SignedExport:
    """A page of the visits starting in the period, of one clinic or of every clinic in the auditor's scope, after
    ``cursor`` (a visit id; 0 from the start), at most ``limit``; recorded in the audit log before it is returned."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidValue(f"a page holds 1 to {MAX_PAGE} visits")
    clinics = audited_clinics(caller, clinic_id)
    start, end = period.bounds()
    async with ctx.uow(read_only=True) as uow:
        if clinic_id is not None:
            await uow.clinics.get(clinic_id)
        found = await uow.queries.evidence_page(clinics, start, end, after=cursor, limit=limit + 1,
                                                **channels_on(ctx.settings))
    page = found[:limit]
    next_cursor = page[-1].id if len(found) > limit else None
    now = ctx.clock.now()
    about = _about(caller, "visits", {**period.about(), "clinic": clinic_id if clinic_id is not None else "all"}, now)
    about.update(cursor=cursor, next_cursor=next_cursor, rows=len(page))
    read: dict[int, dict[str, Any]] = defaultdict(lambda: {"visits": 0, "patients": set()})
    for row in page:
        read[row.clinic_id]["visits"] += 1
        read[row.clinic_id]["patients"].add(row.patient_id)
    async with ctx.uow() as uow:
        await _record_read(uow, caller, now, "auditor.read_visits", about,
                           {c: {"cursor": cursor, "visits": r["visits"], "patients": sorted(r["patients"])}
                            for c, r in read.items()}, clinic_id)
        await uow.commit()
    return SignedExport("visits", [_evidence(row) for row in page], about, next_cursor)


async def export_flags(ctx: Context, caller: Caller, period: Period, *, clinic_id: int | None = None,
                       doctor_id: int | None = None) -> SignedExport:
    """The red flags raised in the period (core.services.flags), of one clinic or every clinic in the auditor's
    scope, optionally one doctor's; recorded in the audit log before it is returned."""
    clinics = audited_clinics(caller, clinic_id)
    if doctor_id is not None:
        async with ctx.uow(read_only=True) as uow:
            doctor = await uow.doctors.get(doctor_id)
        if clinics is not None and doctor.clinic_id not in clinics:
            raise NotFound(f"doctor {doctor_id} not found")
    if clinics is None:
        flags = await find_flags(ctx, period.first_day, period.last_day, doctor_id=doctor_id)
    else:
        async with ctx.uow(read_only=True) as uow:
            for clinic in sorted(clinics):
                await uow.clinics.get(clinic)
        flags = [flag for clinic in sorted(clinics)
                 for flag in await find_flags(ctx, period.first_day, period.last_day, clinic_id=clinic,
                                              doctor_id=doctor_id)]
    now = ctx.clock.now()
    about = _about(caller, "flags", {**period.about(), "clinic": clinic_id if clinic_id is not None else "all",
                                     "doctor": doctor_id}, now)
    about.update(rows=len(flags))
    read: dict[int, dict[str, Any]] = defaultdict(lambda: {"flags": 0, "visits": set()})
    for flag in flags:
        read[flag.clinic_id]["flags"] += 1
        read[flag.clinic_id]["visits"].update(flag.visit_ids)
    async with ctx.uow() as uow:
        await _record_read(uow, caller, now, "auditor.read_flags", about,
                           {c: {"flags": r["flags"], "visits": len(r["visits"])} for c, r in read.items()}, clinic_id)
        await uow.commit()
    rows = [{"clinic_id": f.clinic_id, "doctor_id": f.doctor_id, "day": f.day.isoformat() if f.day else None,
             "kind": f.kind.value, "description": f.description, "value": f.value, "threshold": f.threshold,
             "explanation": f.explain(), "visit_ids": list(f.visit_ids)} for f in flags]
    return SignedExport("flags", rows, about, flags=flags)
