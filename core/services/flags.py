"""Red flags for the payer's auditors: explainable rules over what Rastau stores, no machine learning.

Each rule is one query (core/db/queries.py, ``FlagQueries``) on SQLite and PostgreSQL; its thresholds are settings
(``RASTAU_FLAG_*``, defaults from the public record where it has one, see .env.example). A flag says which clinic,
doctor and day it concerns, what was measured against which threshold, and which visits raised it, so an auditor can
open each of them. ``rastau flags`` calls :func:`find_flags` and :func:`flags_csv`; the auditors' flags endpoint and
daily summary are to call the same two.
"""
from __future__ import annotations

import datetime as dt
import enum
import io
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from core import csvfile
from core.clock import ALMATY, local_day_bounds
from core.config import Settings
from core.db.repositories import AnyRow
from core.db.uow import UnitOfWork
from core.services import Context
from core.services.flag_lists import rule_of

# The Astana pilot's share of visits whose patients refused the photo and gave a code (10%): a doctor below it is
# never flagged for codes, however low the clinic's median.
PILOT_CODE_SHARE = 0.10


class FlagKind(str, enum.Enum):
    DAY_VOLUME = "day_volume"
    CLOSE_VISITS = "close_visits"
    TWO_CLINICS = "two_clinics"
    DOCTOR_CODE_SHARE = "doctor_code_share"
    CLINIC_CODE_SHARE = "clinic_code_share"
    UNVERIFIED_SHARE = "unverified_share"
    DISPUTED_SHARE = "disputed_share"
    NO_ANSWER_SHARE = "no_answer_share"
    REGISTERED_LATE = "registered_late"
    FACE_REPLACEMENTS = "face_replacements"
    ENROLMENT_DISPUTES = "enrolment_disputes"
    SHARED_PHONE = "shared_phone"
    CODE_CAP_HOURS = "code_cap_hours"
    FACE_CAP_HOURS = "face_cap_hours"
    SERVICE_MISFIT = "service_misfit"
    AFTER_DEATH = "after_death"


# What each kind means, in English for the operator's `rastau flags` and the API's exports. The auditors' chat names
# each kind in kk and ru from the bot's catalogs (bot/auditor_texts.py FLAG_NAME; its test covers every kind).
DESCRIPTIONS: dict[FlagKind, str] = {
    FlagKind.DAY_VOLUME: "a doctor billed more visits in one day than a day holds",
    FlagKind.CLOSE_VISITS: "a doctor's visits started too soon one after another to have happened",
    FlagKind.TWO_CLINICS: "the same doctor (same phone) billed visits in two clinics at the same time",
    FlagKind.DOCTOR_CODE_SHARE: "a doctor verified in-person visits by code instead of face far more than the clinic",
    FlagKind.CLINIC_CODE_SHARE: "a clinic verified its in-person visits by code instead of face far more than usual",
    FlagKind.UNVERIFIED_SHARE: "many of a doctor's visits had no evidence at all (no face, no code)",
    FlagKind.DISPUTED_SHARE: "many of a doctor's patients said they were not at the visit",
    FlagKind.NO_ANSWER_SHARE: "most of a doctor's patients never answered whether they were at the visit",
    FlagKind.REGISTERED_LATE: "visits were registered after their verification window had closed",
    FlagKind.FACE_REPLACEMENTS: "a clinic replaced many patients' enrolled faces",
    FlagKind.ENROLMENT_DISPUTES: "patients said a change to their face, phone or consent was not made by them",
    FlagKind.SHARED_PHONE: "many patients of a clinic are registered with one phone number",
    FlagKind.CODE_CAP_HOURS: "a clinic reached its hourly cap of wrong codes hour after hour (code guessing)",
    FlagKind.FACE_CAP_HOURS: "a clinic reached its hourly cap of failed face checks hour after hour (face guessing)",
    FlagKind.SERVICE_MISFIT: "a service was billed for a patient of the wrong sex or age for it, per the IIN",
    FlagKind.AFTER_DEATH: "visits were billed for a patient after the patient's date of death",
}


@dataclass(frozen=True)
class Flag:
    kind: FlagKind
    clinic_id: int
    doctor_id: int | None  # None: the flag concerns the clinic
    day: dt.date | None  # the Asia/Almaty day it concerns; None: the whole period
    value: float  # what was measured (a count, or a share from 0 to 1)
    threshold: float  # what it went over (a count flags above it; "at least" rules say so in their text)
    visit_ids: tuple[int, ...]  # the visits that raised it, ascending
    detail: dict[str, str | int | float] = field(default_factory=dict, compare=False)

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.kind]

    def explain(self) -> str:
        """One English sentence with the figures: what the auditor reads beside the visit list."""
        d, value, limit = self.detail, _figure(self.value), _figure(self.threshold)
        who = f"doctor {self.doctor_id}" if self.doctor_id is not None else f"clinic {self.clinic_id}"
        on = f" on {self.day:%Y-%m-%d}" if self.day else ""
        match self.kind:
            case FlagKind.DAY_VOLUME:
                return f"{who} billed {value} visits{on}; the norm is {d['norm']} a day, flagged above {limit}"
            case FlagKind.CLOSE_VISITS:
                return (f"{who} had {value} visits{on} starting less than {d['gap_minutes']} minutes after the "
                        f"previous one (flagged from {limit})")
            case FlagKind.TWO_CLINICS:
                return (f"{who} had {value} visits{on} overlapping visits billed by the same phone's doctor in "
                        f"clinic {d['other_clinic_id']}")
            case FlagKind.DOCTOR_CODE_SHARE | FlagKind.CLINIC_CODE_SHARE:
                median = (f"; the clinic's median is {_percent(float(d['clinic_median']))}"
                          if "clinic_median" in d else "")
                return (f"{who} verified {_percent(self.value)} of {d['verified']} in-person visits by code instead of "
                        f"face (flagged above {_percent(self.threshold)}{median})")
            case FlagKind.UNVERIFIED_SHARE | FlagKind.DISPUTED_SHARE | FlagKind.NO_ANSWER_SHARE:
                what = {FlagKind.UNVERIFIED_SHARE: "had no evidence", FlagKind.DISPUTED_SHARE: "were disputed by "
                        "the patient", FlagKind.NO_ANSWER_SHARE: "were never answered by the patient"}[self.kind]
                return (f"{_percent(self.value)} of {who}'s {d['billed']} visits {what} (flagged above "
                        f"{_percent(self.threshold)})")
            case FlagKind.REGISTERED_LATE:
                return f"{who} registered {value} visits after their verification window had closed"
            case FlagKind.FACE_REPLACEMENTS:
                return (f"{who} replaced {value} enrolled faces in the period (flagged from {limit}); the listed "
                        "visits were verified against the new faces")
            case FlagKind.ENROLMENT_DISPUTES:
                return (f"patients of {who} disputed {value} changes to their face, phone or consent; the listed "
                        "visits were verified against a disputed enrolment")
            case FlagKind.SHARED_PHONE:
                return f"{value} patients of {who} share the phone number {d['phone']} (flagged above {limit})"
            case FlagKind.CODE_CAP_HOURS:
                return (f"{who} reached its cap of {d['cap']} wrong codes an hour in {value} hours (flagged from "
                        f"{limit}); the listed visits were verified by code in those hours")
            case FlagKind.FACE_CAP_HOURS:
                return (f"{who} reached its cap of {d['cap']} failed face checks an hour in {value} hours (flagged "
                        f"from {limit}); the listed visits were verified by a face in those hours")
            case FlagKind.SERVICE_MISFIT:
                return (f"{who} billed service {d['service_code']} ({d['rule']}) {value} times for patients outside "
                        "it by the IIN's sex or age")
            case FlagKind.AFTER_DEATH:
                return f"{who} billed {value} visits for patients after their date of death"


def _figure(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:.2f}"


def _percent(share: float) -> str:
    return f"{share * 100:.0f}%"


def _ids(*texts: str | None) -> tuple[int, ...]:
    """The ids in group_concat / string_agg texts, deduplicated and ascending."""
    return tuple(sorted({int(i) for text in texts if text for i in text.split(",")}))


def _day(value: dt.date | str) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(value)


def _mask_phone(phone: str) -> str:
    return "*" * (len(phone) - 4) + phone[-4:]


async def find_flags(ctx: Context, first_day: dt.date, last_day: dt.date, *, clinic_id: int | None = None,
                     doctor_id: int | None = None) -> list[Flag]:
    """Every flag raised by visits starting on the Asia/Almaty days ``first_day`` to ``last_day`` (both included),
    for one clinic or all, one doctor or all (with a doctor, the flags about a whole clinic are left out), ordered
    by clinic, kind, doctor and day. One read: a snapshot on SQLite, a statement's snapshot each on PostgreSQL."""
    async with ctx.uow(read_only=True) as uow:
        return await flags_in(uow, ctx.settings, first_day, last_day, clinic_id=clinic_id, doctor_id=doctor_id)


async def flags_in(uow: UnitOfWork, s: Settings, first_day: dt.date, last_day: dt.date, *,
                   clinic_id: int | None = None, doctor_id: int | None = None) -> list[Flag]:
    """:func:`find_flags` inside a read the caller holds open (a scorecard reads its counts, flags and the flags'
    visits in one snapshot on SQLite)."""
    start, end = local_day_bounds(first_day, ALMATY)[0], local_day_bounds(last_day, ALMATY)[1]
    flags: list[Flag] = []
    clinic_wide = doctor_id is None
    q = uow.flag_queries
    above = int(s.flag_daily_visit_norm * s.flag_daily_visit_factor)
    flags += [Flag(FlagKind.DAY_VOLUME, r.clinic_id, r.doctor_id, _day(r.day), r.value, above, _ids(r.visit_ids),
                   {"norm": s.flag_daily_visit_norm})
              for r in await q.day_volume(start, end, clinic_id, doctor_id, above=above)]
    flags += [Flag(FlagKind.CLOSE_VISITS, r.clinic_id, r.doctor_id, _day(r.day), r.value,
                   s.flag_close_visits_per_day, _ids(r.visit_ids), {"gap_minutes": s.flag_min_visit_gap_minutes})
              for r in await q.close_visits(start, end, clinic_id, doctor_id,
                                            gap_seconds=s.flag_min_visit_gap_minutes * 60,
                                            at_least=s.flag_close_visits_per_day)]
    flags += [Flag(FlagKind.TWO_CLINICS, r.clinic_id, r.doctor_id, _day(r.day), r.value, 0, _ids(r.visit_ids),
                   {"other_clinic_id": r.other_clinic_id, "other_clinics": r.other_clinics})
              for r in await q.two_clinics(start, end, clinic_id, doctor_id)]
    flags += _code_share_flags(s, await q.code_shares(start, end, clinic_id, doctor_id), doctor_id)
    flags += _answer_flags(s, await q.answer_shares(start, end, clinic_id, doctor_id))
    misfits = await q.service_mismatches(start, end, clinic_id, doctor_id)
    rules = {r.service_code: rule_of(r).describe() for r in await uow.service_rules.list()} if misfits else {}
    flags += [Flag(FlagKind.SERVICE_MISFIT, r.clinic_id, r.doctor_id, None, r.value, 0, _ids(r.visit_ids),
                   {"service_code": r.service_code, "rule": rules[r.service_code]}) for r in misfits]
    flags += [Flag(FlagKind.AFTER_DEATH, r.clinic_id, r.doctor_id, None, r.value, 0, _ids(r.visit_ids),
                   {"earliest_death": str(r.earliest_death)})
              for r in await q.after_death(start, end, clinic_id, doctor_id)]
    if clinic_wide:
        flags += [Flag(FlagKind.FACE_REPLACEMENTS, r.clinic_id, None, None, r.value, s.flag_face_replacements,
                       _ids(r.visit_ids))
                  for r in await q.face_replacements(start, end, clinic_id, at_least=s.flag_face_replacements)]
        flags += [Flag(FlagKind.ENROLMENT_DISPUTES, r.clinic_id, None, None, r.value, 0, _ids(r.visit_ids))
                  for r in await q.enrolment_disputes(start, end, clinic_id)]
        flags += [Flag(FlagKind.SHARED_PHONE, r.clinic_id, None, None, r.value, s.flag_patients_per_phone,
                       _ids(r.visit_ids), {"phone": _mask_phone(r.phone)})
                  for r in await q.shared_phones(start, end, clinic_id, above=s.flag_patients_per_phone)]
        cap = s.clinic_code_failures_per_hour
        flags += [Flag(FlagKind.CODE_CAP_HOURS, r.clinic_id, None, None, r.value, s.flag_cap_hours,
                       _ids(r.visit_ids), {"cap": cap})
                  for r in await q.code_cap_hours(start, end, clinic_id, cap=cap, at_least=s.flag_cap_hours)]
        face_cap = s.clinic_face_failures_per_hour
        flags += [Flag(FlagKind.FACE_CAP_HOURS, r.clinic_id, None, None, r.value, s.flag_cap_hours,
                       _ids(r.visit_ids), {"cap": face_cap})
                  for r in await q.face_cap_hours(start, end, clinic_id, cap=face_cap,
                                                  at_least=s.flag_cap_hours)]
    order = list(FlagKind)
    return sorted(flags, key=lambda f: (f.clinic_id, order.index(f.kind), f.doctor_id or 0, f.day or dt.date.min,
                                        f.visit_ids))


def _code_share_flags(s: Settings, rows: Iterable[AnyRow], doctor_id: int | None) -> list[Flag]:
    """Each doctor against the clinic's median share of code-verified in-person visits (over its doctors with
    enough visits), and each clinic against the absolute cap: a clinic that verifies everything by code has a
    median of 100% and no doctor stands out, so the clinic itself is flagged."""
    by_clinic: dict[int, list[AnyRow]] = defaultdict(list)
    for r in rows:
        by_clinic[r.clinic_id].append(r)
    flags = []
    for clinic_id, doctors in by_clinic.items():
        judged = [r for r in doctors if r.verified >= s.flag_min_visits]
        median = statistics.median(r.code / r.verified for r in judged) if judged else 0.0
        limit = max(median * s.flag_code_share_factor, PILOT_CODE_SHARE)
        flags += [Flag(FlagKind.DOCTOR_CODE_SHARE, clinic_id, r.doctor_id, None, r.code / r.verified, limit,
                       _ids(r.visit_ids), {"verified": r.verified, "clinic_median": median})
                  for r in judged if r.code / r.verified > limit and doctor_id in (None, r.doctor_id)]
        verified, code = sum(r.verified for r in doctors), sum(r.code for r in doctors)
        if doctor_id is None and verified >= s.flag_min_visits and code / verified > s.flag_code_share_max:
            flags.append(Flag(FlagKind.CLINIC_CODE_SHARE, clinic_id, None, None, code / verified,
                              s.flag_code_share_max, _ids(*(r.visit_ids for r in doctors)), {"verified": verified}))
    return flags


def _answer_flags(s: Settings, rows: Iterable[AnyRow]) -> list[Flag]:
    shares = ((FlagKind.UNVERIFIED_SHARE, "unverified", s.flag_unverified_share),
              (FlagKind.DISPUTED_SHARE, "disputed", s.flag_disputed_share),
              (FlagKind.NO_ANSWER_SHARE, "no_answer", s.flag_no_answer_share))
    flags = []
    for r in rows:
        if r.late:
            flags.append(Flag(FlagKind.REGISTERED_LATE, r.clinic_id, r.doctor_id, None, r.late, 0,
                              _ids(r.late_ids)))
        if r.billed < s.flag_min_visits:
            continue
        flags += [Flag(kind, r.clinic_id, r.doctor_id, None, getattr(r, name) / r.billed, limit,
                       _ids(getattr(r, f"{name}_ids")), {"billed": r.billed})
                  for kind, name, limit in shares if getattr(r, name) / r.billed > limit]
    return flags


CSV_COLUMNS = ("clinic_id", "doctor_id", "day", "kind", "value", "threshold", "explanation", "visits", "visit_ids")


def flags_csv(flags: Iterable[Flag]) -> str:
    """One row per flag, its visit ids space-separated in the last column (through core.csvfile: no formulas)."""
    out = io.StringIO()
    writer = csvfile.writer(out)
    writer.writerow(CSV_COLUMNS)
    for f in flags:
        writer.writerow([f.clinic_id, f.doctor_id if f.doctor_id is not None else "",
                         f.day.isoformat() if f.day else "", f.kind.value, round(f.value, 4), round(f.threshold, 4),
                         f.explain(), len(f.visit_ids), " ".join(map(str, f.visit_ids))])
    return out.getvalue()
