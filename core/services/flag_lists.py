"""The operator's lists the red-flag rules read: dates of death (``rastau import-deaths``) and which sex and age band
a service may be billed for (``rastau service-rules``).

A file is checked row by row before anything is written; good rows are stored in one transaction, bad rows come back
with their line number and the reason, never the IIN. Importing the same file twice changes nothing.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass

from core.clock import to_local
from core.db.repositories import AnyRow
from core.errors import DomainError, InvalidValue, NotFound
from core.iin import parse_iin
from core.services import Context

_OPERATOR = "cli:rastau"
_HEADER_WORDS = {"iin", "иин", "жсн", "service_code"}  # a first row naming its columns is skipped
_DATE_FORMATS = ("%Y-%m-%d", "%d.%m.%Y")  # ISO, and the day.month.year Kazakhstan's registries print
SEXES = ("male", "female")
OLDEST_AGE = 130


@dataclass(frozen=True)
class Rejected:
    line: int
    reason: str


@dataclass(frozen=True)
class DeathImport:
    added: int
    updated: int  # listed before with another date: the new one replaced it
    unchanged: int
    rejected: list[Rejected]


@dataclass(frozen=True)
class ServiceRule:
    service_code: str
    sex: str | None  # None: either
    min_age: int | None
    max_age: int | None
    source: str

    def describe(self) -> str:
        who = {"male": "men", "female": "women", None: "everyone"}[self.sex]
        low, high = self.min_age, self.max_age
        ages = (f" {low}-{high}" if low is not None and high is not None else f" from {low}" if low is not None
                else f" up to {high}" if high is not None else "")
        return f"{who}{ages}"


@dataclass(frozen=True)
class RuleImport:
    added: int
    changed: int
    rejected: list[Rejected]


def _rows(text: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of each non-empty row, a header row left out."""
    found: list[tuple[int, list[str]]] = []
    for number, cells in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in cells]
        if not any(cells):
            continue
        if not found and cells[0].lower() in _HEADER_WORDS:
            continue
        found.append((number, cells))
    return found


def _date(raw: str) -> dt.date:
    for form in _DATE_FORMATS:
        try:
            return dt.datetime.strptime(raw, form).date()  # noqa: DTZ007 - a calendar date, no moment
        except ValueError:
            continue
    raise InvalidValue("the date must be YYYY-MM-DD or DD.MM.YYYY")


def read_deaths(text: str, today: dt.date) -> tuple[dict[str, dt.date], list[Rejected]]:
    """Check a CSV of ``IIN,date`` rows: a valid IIN (core.iin), a date neither in the future nor before the birth
    date the IIN gives, and an IIN listed once (again with the same date is harmless, with another is refused)."""
    deaths: dict[str, dt.date] = {}
    first_line: dict[str, int] = {}
    rejected = []
    for line, cells in _rows(text):
        try:
            if len(cells) != 2:
                raise InvalidValue(f"expected 2 columns (IIN,date), found {len(cells)}")
            facts = parse_iin(cells[0])
            died_on = _date(cells[1])
            if died_on > today:
                raise InvalidValue("the date of death is in the future")
            if died_on < facts.birth_date:
                raise InvalidValue("the date of death is before the birth date the IIN gives")
            if deaths.get(facts.iin, died_on) != died_on:
                raise InvalidValue(f"the same IIN is listed on line {first_line[facts.iin]} with another date")
        except DomainError as exc:
            rejected.append(Rejected(line, exc.detail))
            continue
        deaths[facts.iin] = died_on
        first_line.setdefault(facts.iin, line)
    return deaths, rejected


async def import_deaths(ctx: Context, text: str, source: str) -> DeathImport:
    """Store the file's good rows (``source`` names the file or registry extract), and audit-log the import."""
    now = ctx.clock.now()
    deaths, rejected = read_deaths(text, to_local(now).date())
    async with ctx.uow() as uow:
        written = await uow.deaths.upsert(deaths, source[:200], now)
        await uow.audit.append(now, _OPERATOR, "deaths.import", "deaths",
                               {"source": source[:200], "added": written.added, "updated": written.updated,
                                "unchanged": written.unchanged, "rejected": len(rejected)}, clinic_id=None)
        await uow.commit()
    return DeathImport(added=written.added, updated=written.updated, unchanged=written.unchanged, rejected=rejected)


def _age(raw: str, what: str) -> int | None:
    if not raw:
        return None
    if not raw.isascii() or not raw.isdigit() or int(raw) > OLDEST_AGE:
        raise InvalidValue(f"{what} must be a whole number of years from 0 to {OLDEST_AGE}, or empty")
    return int(raw)


def read_rule(cells: list[str]) -> ServiceRule:
    """One ``service_code,sex,min_age,max_age,source`` row: sex male, female or empty (either); ages inclusive, in
    whole years on the visit's day, empty for no bound; the source says where the band comes from."""
    if len(cells) != 5:
        raise InvalidValue(f"expected 5 columns (service_code,sex,min_age,max_age,source), found {len(cells)}")
    code, sex, low, high, source = cells
    if not code or len(code) > 64:
        raise InvalidValue("the service code must be 1-64 characters")
    if sex.lower() not in (*SEXES, "", "any"):
        raise InvalidValue("sex must be male, female, or empty for either")
    min_age, max_age = _age(low, "min_age"), _age(high, "max_age")
    if min_age is not None and max_age is not None and min_age > max_age:
        raise InvalidValue("min_age is above max_age")
    if sex.lower() in ("", "any") and min_age is None and max_age is None:
        raise InvalidValue("a rule without a sex or an age bound fits everyone; remove the service instead")
    if not source or len(source) > 300:
        raise InvalidValue("say where the rule comes from (an order, a guideline), in at most 300 characters")
    return ServiceRule(code, sex.lower() if sex.lower() in SEXES else None, min_age, max_age, source)


async def import_service_rules(ctx: Context, text: str) -> RuleImport:
    """Add or change the file's rules (the others stay as they are), audit-logging each one written."""
    good: dict[str, ServiceRule] = {}
    rejected = []
    for line, cells in _rows(text):
        try:
            rule = read_rule(cells)
        except DomainError as exc:
            rejected.append(Rejected(line, exc.detail))
            continue
        good[rule.service_code] = rule
    now = ctx.clock.now()
    added = changed = 0
    async with ctx.uow() as uow:
        before = {r.service_code: rule_of(r) for r in await uow.service_rules.list()}
        for rule in good.values():
            if before.get(rule.service_code) == rule:
                continue
            new = await uow.service_rules.put(service_code=rule.service_code, sex=rule.sex, min_age=rule.min_age,
                                              max_age=rule.max_age, source=rule.source, now=now)
            added, changed = added + new, changed + (not new)
            await uow.audit.append(now, _OPERATOR, "service_rule.set", f"service:{rule.service_code}",
                                   {"sex": rule.sex, "min_age": rule.min_age, "max_age": rule.max_age,
                                    "source": rule.source}, clinic_id=None)
        await uow.commit()
    return RuleImport(added=added, changed=changed, rejected=rejected)


async def remove_service_rule(ctx: Context, service_code: str) -> None:
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        if not await uow.service_rules.remove(service_code):
            raise NotFound(f"no rule for service {service_code!r}")
        await uow.audit.append(now, _OPERATOR, "service_rule.remove", f"service:{service_code}", {}, clinic_id=None)
        await uow.commit()


async def service_rules(ctx: Context) -> list[ServiceRule]:
    async with ctx.uow(read_only=True) as uow:
        return [rule_of(r) for r in await uow.service_rules.list()]


def rule_of(row: AnyRow) -> ServiceRule:
    return ServiceRule(service_code=row.service_code, sex=row.sex, min_age=row.min_age, max_age=row.max_age,
                       source=row.source)
