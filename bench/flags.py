"""Red flags over a month, out of a large visits table: `find_flags` (every rule, one clinic and all clinics) against
one hand-written SQL query per rule, in the same run.

The table is the digest benchmark's (bench/digest.py: 20 clinics, 10 doctors and 2,500 patients each, 200 visits a
clinic-day), with some fraud added so the rules have something to find: a cervical screening billed for men, deaths
listed for some patients, eight patients on one phone in each clinic, a clinic at its wrong-code and face caps three
hours running. Before timing, each rule's query and its hand-written twin must answer the same groups, values and
visits.
"""
from __future__ import annotations

import datetime as dt
import time
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.code_http import load_average
from bench.digest import CLINICS, FIRST_DAY, _seed_sql, _settings
from bench.results import interleaved, median, percentile
from core.clock import ALMATY, ManualClock, local_day_bounds
from core.db.engine import READ_ONLY_OPTION, create_engine, is_sqlite
from core.db.migrate import upgrade_to_head
from core.db.tables import UtcDateTime
from core.db.uow import UnitOfWorkFactory
from core.services import Context
from core.services.flags import find_flags

CLINIC = 7
WHAT_IT_COSTS = (
    "- what it costs: each rule reads the period's visits in its scope once (one clinic's month through "
    "`ix_visits_clinic_start`, every clinic's month by a range scan), so the time follows the visits in the period, "
    "not the visits stored; the flags here list about half the month's visits (the seeded world is fraud-heavy: "
    "every tenth visit unverified and every tenth disputed, so every doctor is flagged for shares); find_flags adds "
    "building the flags in Python (the id lists parsed and sorted, medians, shares, sentences). A ratio near or under "
    "1× means the SQL is the cost (p95 under 1× is the machine's noise); the figures are for a monthly audit run, not "
    "a request path.")
PER_DAY = 200  # visits a clinic-day, as the digest benchmark seeds them


def month_of(visits: int) -> tuple[dt.date, dt.date]:
    """31 days from the middle of the seeded days (all of them when fewer)."""
    days = max(visits // (PER_DAY * CLINICS), 1)
    first = FIRST_DAY + dt.timedelta(days=max(days // 2 - 15, 0))
    return first, first + dt.timedelta(days=30)


def _fraud_sql(sqlite: bool, month: tuple[dt.date, dt.date]) -> list[str]:
    now = "'2026-01-01 00:00:00.000000'" if sqlite else "now()"
    cap_day = month[0] + dt.timedelta(days=2)
    hour = f"'{cap_day} 0{{h}}:00:00.000000'" if sqlite else f"timestamptz '{cap_day} 0{{h}}:00:00+00'"
    died = month[0] + dt.timedelta(days=1)
    return [
        "UPDATE visits SET service_code = 'SCREEN-CERVICAL' WHERE id % 97 = 0",  # every bench patient is a man
        f"INSERT INTO deaths (iin, died_on, source, imported_at) SELECT iin, '{died}', 'bench', {now} "
        "FROM patients WHERE id % 500 = 0",
        "UPDATE patients SET phone = '+77020000000' WHERE id % 2500 BETWEEN 1 AND 8",
        *(f"INSERT INTO clinic_code_failures (clinic_id, hour_start, failures) VALUES ({CLINIC}, "
          f"{hour.format(h=h)}, 100)" for h in (4, 5, 6)),
        *(f"INSERT INTO face_failures_hourly (scope, subject_id, hour_start, failures) VALUES ('clinic', {CLINIC}, "
          f"{hour.format(h=h)}, 300)" for h in (4, 5, 6)),
        # the statistics of these tables only: a bare ANALYZE on PostgreSQL reads every schema in the database
        *(f"ANALYZE {table}" for table in ("clinics", "doctors", "patients", "visits", "deaths",
                                           "clinic_code_failures", "patient_changes", "service_rules")),
    ]


def _dialect(sqlite: bool) -> dict[str, Any]:
    """The pieces a DBA writes differently on each engine: the Asia/Almaty day (UTC+5), its YYYYMMDD number,
    seconds between two moments, a group's ids as text."""
    if sqlite:
        return {"day": lambda c: f"date({c}, '+5 hours')",
                "ymd": lambda c: f"CAST(strftime('%Y%m%d', {c}, '+5 hours') AS INTEGER)",
                "secs": lambda a, b: f"round((julianday({a}) - julianday({b})) * 86400.0, 3)",
                "ids": lambda c: f"group_concat({c})"}
    return {"day": lambda c: f"CAST(({c} AT TIME ZONE 'UTC') + INTERVAL '5 hours' AS DATE)",
            "ymd": lambda c: f"CAST(to_char(({c} AT TIME ZONE 'UTC') + INTERVAL '5 hours', 'YYYYMMDD') AS INTEGER)",
            "secs": lambda a, b: f"EXTRACT(EPOCH FROM ({a} - {b}))",
            "ids": lambda c: f"string_agg(CAST({c} AS TEXT), ',')"}


def hand_written(sqlite: bool, clinic: int | None) -> dict[str, Any]:
    """One query per rule, as one would write it by hand; :clinic filters when given. Built from constants only
    (hence the nosec): no input reaches the text."""
    d = _dialect(sqlite)
    day, ymd, secs, ids = d["day"], d["ymd"], d["secs"], d["ids"]

    def only(alias: str) -> str:
        return f" AND {alias}clinic_id = {clinic}" if clinic is not None else ""

    billed = "state <> 'cancelled' AND start_at >= :start AND start_at < :end"
    vbilled = "v.state <> 'cancelled' AND v.start_at >= :start AND v.start_at < :end"
    digit = "CAST(substr(p.iin, 7, 1) AS INTEGER)"
    age = (f"(({ymd('v.start_at')} - (CAST(substr(p.iin, 1, 6) AS INTEGER) + (1800 + 100 * (({digit} - 1) / 2)) "
           "* 10000)) / 10000)")

    def share(cond: str, name: str) -> str:
        return (f"SUM(CASE WHEN {cond} THEN 1 ELSE 0 END) AS {name}, "
                f"{ids(f'CASE WHEN {cond} THEN id END')} AS {name}_ids")

    unanswered = "state NOT IN ('patient_confirmed', 'patient_disputed', 'scheduled') AND attended_claim_at IS NULL"
    queries = {  # nosec B608
        "day_volume": f"SELECT clinic_id, doctor_id, {day('start_at')} AS day, count(*) AS value, {ids('id')} AS "
                      f"visit_ids FROM visits WHERE {billed}{only('')} GROUP BY clinic_id, doctor_id, "
                      f"{day('start_at')} HAVING count(*) > :above",
        "close_visits": f"SELECT clinic_id, doctor_id, {day('start_at')} AS day, count(*) AS value, {ids('id')} AS "
                        "visit_ids FROM (SELECT id, clinic_id, doctor_id, start_at, lag(start_at) OVER (PARTITION BY "
                        f"doctor_id ORDER BY start_at, id) AS previous FROM visits WHERE {billed}{only('')}) s "
                        f"WHERE previous IS NOT NULL AND {secs('start_at', 'previous')} < :gap GROUP BY clinic_id, "
                        f"doctor_id, {day('start_at')} HAVING count(*) >= :at_least",
        "two_clinics": f"SELECT v.clinic_id, v.doctor_id, {day('v.start_at')} AS day, count(DISTINCT v.id) AS value, "
                       f"{ids('v.id')} AS visit_ids, min(w.clinic_id) AS other_clinic_id, count(DISTINCT w.clinic_id) "
                       "AS other_clinics FROM visits v JOIN doctors d ON d.id = v.doctor_id JOIN doctors e ON "
                       "e.phone = d.phone AND e.clinic_id <> d.clinic_id JOIN visits w ON w.doctor_id = e.id AND "
                       "w.state <> 'cancelled' AND w.start_at >= :wide_start AND w.start_at < :end "
                       f"WHERE {vbilled}{only('v.')} AND {secs('w.start_at', 'v.start_at')} < v.duration_s AND "
                       f"{secs('v.start_at', 'w.start_at')} < w.duration_s "
                       f"GROUP BY v.clinic_id, v.doctor_id, {day('v.start_at')}",
        "code_shares": "SELECT clinic_id, doctor_id, count(*) AS verified, "
                       f"{share('verified_by = ' + repr('code'), 'code').replace('code_ids', 'visit_ids')} "
                       f"FROM visits WHERE {billed}{only('')} AND mode = 'in_person' AND verified_by IS NOT NULL "
                       "GROUP BY clinic_id, doctor_id",
        "answer_shares": "SELECT clinic_id, doctor_id, count(*) AS billed, "
                         f"{share('verified_by IS NULL AND state <> ' + repr('scheduled'), 'unverified')}, "
                         f"{share('state = ' + repr('patient_disputed'), 'disputed')}, "
                         f"{share(unanswered, 'no_answer')}, {share('registered_late', 'late')} "
                         f"FROM visits WHERE {billed}{only('')} GROUP BY clinic_id, doctor_id",
        "face_replacements": f"SELECT c.clinic_id, count(DISTINCT c.id) AS value, {ids('v.id')} AS visit_ids "
                             "FROM patient_changes c LEFT JOIN visits v ON v.verified_enrolment_id = c.id WHERE "
                             f"c.kind = 'face_replaced' AND c.at >= :start AND c.at < :end{only('c.')} "
                             "GROUP BY c.clinic_id HAVING count(DISTINCT c.id) >= :at_least",
        "enrolment_disputes": f"SELECT c.clinic_id, count(DISTINCT c.id) AS value, {ids('v.id')} AS visit_ids "
                              "FROM patient_changes c LEFT JOIN visits v ON v.verified_enrolment_id = c.id WHERE "
                              f"c.disputed_at >= :start AND c.disputed_at < :end{only('c.')} GROUP BY c.clinic_id",
        "shared_phones": f"SELECT p.clinic_id, p.phone, count(DISTINCT p.id) AS value, {ids('v.id')} AS visit_ids "
                         f"FROM patients p LEFT JOIN visits v ON v.patient_id = p.id AND {vbilled} "
                         f"WHERE 1 = 1{only('p.')} GROUP BY p.clinic_id, p.phone "
                         "HAVING count(DISTINCT p.id) > :above AND count(v.id) > 0",
        "code_cap_hours": f"SELECT h.clinic_id, count(DISTINCT h.hour_start) AS value, {ids('v.id')} AS visit_ids "
                          "FROM clinic_code_failures h LEFT JOIN visits v ON v.clinic_id = h.clinic_id AND "
                          "v.verified_by = 'code' AND v.start_at >= :wide_start AND v.start_at < :wide_end AND "
                          f"v.verified_at >= h.hour_start AND {secs('v.verified_at', 'h.hour_start')} < 3600 "
                          f"WHERE h.failures >= :cap AND h.hour_start >= :start AND h.hour_start < :end{only('h.')} "
                          "GROUP BY h.clinic_id HAVING count(DISTINCT h.hour_start) >= :at_least",
        "face_cap_hours": f"SELECT h.subject_id AS clinic_id, count(DISTINCT h.hour_start) AS value, {ids('v.id')} "
                          "AS visit_ids FROM face_failures_hourly h LEFT JOIN visits v ON v.clinic_id = h.subject_id "
                          "AND v.verified_by IS NOT NULL AND v.verified_by <> 'code' AND v.start_at >= :wide_start "
                          "AND v.start_at < :wide_end AND v.verified_at >= h.hour_start AND "
                          f"{secs('v.verified_at', 'h.hour_start')} < 3600 WHERE h.failures >= :cap AND "
                          "h.hour_start >= :start AND h.hour_start < :end AND h.scope = 'clinic'"
                          f"{' AND h.subject_id = ' + str(clinic) if clinic is not None else ''} "
                          "GROUP BY h.subject_id HAVING count(DISTINCT h.hour_start) >= :at_least",
        "service_mismatches": f"SELECT v.clinic_id, v.doctor_id, v.service_code, count(*) AS value, {ids('v.id')} "
                              "AS visit_ids FROM visits v JOIN patients p ON p.id = v.patient_id JOIN service_rules r "
                              f"ON r.service_code = v.service_code WHERE {vbilled}{only('v.')} AND ("
                              f"(r.sex = 'male' AND {digit} % 2 = 0) OR (r.sex = 'female' AND {digit} % 2 = 1) OR "
                              f"(r.min_age IS NOT NULL AND {age} < r.min_age) OR (r.max_age IS NOT NULL AND "
                              f"{age} > r.max_age)) GROUP BY v.clinic_id, v.doctor_id, v.service_code",
        "after_death": f"SELECT v.clinic_id, v.doctor_id, count(*) AS value, {ids('v.id')} AS visit_ids, "
                       "min(x.died_on) AS earliest_death FROM visits v JOIN patients p ON p.id = v.patient_id "
                       f"JOIN deaths x ON x.iin = p.iin WHERE {vbilled}{only('v.')} AND {day('v.start_at')} > "
                       f"x.died_on GROUP BY v.clinic_id, v.doctor_id",
    }
    moments = ("start", "end", "wide_start", "wide_end")
    return {name: text(sql).bindparams(*(bindparam(m, type_=UtcDateTime) for m in moments if f":{m}" in sql))
            for name, sql in queries.items()}


def _params(ctx: Context, start: dt.datetime, end: dt.datetime) -> dict[str, dict[str, Any]]:
    """Each rule's parameters, as find_flags passes them."""
    s = ctx.settings
    period = {"start": start, "end": end}
    return {"day_volume": {**period, "above": int(s.flag_daily_visit_norm * s.flag_daily_visit_factor)},
            "close_visits": {**period, "gap": s.flag_min_visit_gap_minutes * 60,
                             "at_least": s.flag_close_visits_per_day},
            "two_clinics": {**period, "wide_start": start - dt.timedelta(hours=12)},
            "code_shares": period, "answer_shares": period,
            "face_replacements": {**period, "at_least": s.flag_face_replacements},
            "enrolment_disputes": period, "shared_phones": {**period, "above": s.flag_patients_per_phone},
            "code_cap_hours": {**period, "cap": s.clinic_code_failures_per_hour, "at_least": s.flag_cap_hours,
                               "wide_start": start - dt.timedelta(days=1), "wide_end": end + dt.timedelta(days=1)},
            "face_cap_hours": {**period, "cap": s.clinic_face_failures_per_hour, "at_least": s.flag_cap_hours,
                               "wide_start": start - dt.timedelta(days=1), "wide_end": end + dt.timedelta(days=1)},
            "service_mismatches": period, "after_death": period}


async def _ours_per_rule(ctx: Context, start: dt.datetime, end: dt.datetime, clinic: int | None) -> dict[str, list]:
    """What each FlagQueries method answers, called as find_flags calls it."""
    p = _params(ctx, start, end)
    async with ctx.uow(read_only=True) as uow:
        q = uow.flag_queries
        return {
            "day_volume": await q.day_volume(start, end, clinic, None, above=p["day_volume"]["above"]),
            "close_visits": await q.close_visits(start, end, clinic, None, gap_seconds=p["close_visits"]["gap"],
                                                 at_least=p["close_visits"]["at_least"]),
            "two_clinics": await q.two_clinics(start, end, clinic, None),
            "code_shares": await q.code_shares(start, end, clinic),
            "answer_shares": await q.answer_shares(start, end, clinic, None),
            "face_replacements": await q.face_replacements(start, end, clinic,
                                                           at_least=p["face_replacements"]["at_least"]),
            "enrolment_disputes": await q.enrolment_disputes(start, end, clinic),
            "shared_phones": await q.shared_phones(start, end, clinic, above=p["shared_phones"]["above"]),
            "code_cap_hours": await q.code_cap_hours(start, end, clinic, cap=p["code_cap_hours"]["cap"],
                                                     at_least=p["code_cap_hours"]["at_least"]),
            "face_cap_hours": await q.face_cap_hours(start, end, clinic, cap=p["face_cap_hours"]["cap"],
                                                     at_least=p["face_cap_hours"]["at_least"]),
            "service_mismatches": await q.service_mismatches(start, end, clinic, None),
            "after_death": await q.after_death(start, end, clinic, None),
        }


def _normal(rows: list) -> set[tuple]:
    """A rule's answer in a comparable form: every column, id lists as sorted tuples, days as dates."""
    out = set()
    for row in rows:
        cells = []
        for key, value in row._mapping.items():
            if key.endswith("ids"):
                value = tuple(sorted(int(i) for i in value.split(","))) if value else ()
            elif key in ("day", "earliest_death") and isinstance(value, str):
                value = dt.date.fromisoformat(value)
            elif isinstance(value, float) or hasattr(value, "as_integer_ratio"):
                value = round(float(value), 6)
            cells.append((key, value))
        out.add(tuple(sorted(cells, key=lambda cell: cell[0])))
    return out


async def _check_same(ctx: Context, engine: AsyncEngine, reading: dict, start: dt.datetime, end: dt.datetime,
                      clinic: int | None) -> dict[str, int]:
    ours = await _ours_per_rule(ctx, start, end, clinic)
    theirs = hand_written(is_sqlite(str(engine.url)), clinic)
    params = _params(ctx, start, end)
    groups = {}
    async with engine.connect() as conn:
        await conn.execution_options(**reading)
        for name, stmt in theirs.items():
            hand = (await conn.execute(stmt, params[name])).all()
            if _normal(hand) != _normal(ours[name]):
                raise AssertionError(f"rule {name}: FlagQueries and the hand-written query DIFFER")
            groups[name] = len(hand)
    return groups


async def _measure(ctx: Context, engine: AsyncEngine, reading: dict, month: tuple[dt.date, dt.date],
                   clinic: int | None, rounds: int) -> dict:
    start, end = local_day_bounds(month[0], ALMATY)[0], local_day_bounds(month[1], ALMATY)[1]
    groups = await _check_same(ctx, engine, reading, start, end, clinic)
    async with engine.connect() as conn:
        in_month = (await conn.execute(text("SELECT count(*) FROM visits WHERE start_at >= :start AND start_at < :end"
                                            + (f" AND clinic_id = {clinic}" if clinic is not None else ""))  # nosec
                                       .bindparams(bindparam("start", type_=UtcDateTime),
                                                   bindparam("end", type_=UtcDateTime)),
                                       {"start": start, "end": end})).scalar_one()
    theirs = hand_written(is_sqlite(str(engine.url)), clinic)
    params = _params(ctx, start, end)
    found: list = []

    async def ours():
        found[:] = await find_flags(ctx, *month, clinic_id=clinic)

    async def baseline():
        async with engine.connect() as conn:
            await conn.execution_options(**reading)
            return [(await conn.execute(stmt, params[name])).all() for name, stmt in theirs.items()]

    ours_s, base_s = await interleaved(ours, baseline, rounds)
    return {"visits_in_month": in_month, "flags": len(found),
            "flagged_visits": len({v for f in found for v in f.visit_ids}), "groups": groups,
            "ours_p50": median(ours_s), "ours_p95": percentile(ours_s, 95), "base_p50": median(base_s),
            "base_p95": percentile(base_s, 95)}


async def run(database_url: str, *, visits: int, rounds: int) -> dict:
    engine = create_engine(database_url)
    await upgrade_to_head(engine)
    sqlite = is_sqlite(database_url)
    month = month_of(visits)
    load_before = load_average()
    t0 = time.perf_counter()
    async with engine.begin() as conn:
        for statement in [s for s in _seed_sql(sqlite, visits, PER_DAY) if s != "ANALYZE"] + _fraud_sql(sqlite, month):
            await conn.exec_driver_sql(statement)
    seeded = time.perf_counter() - t0
    ctx = Context.build(_settings(database_url), UnitOfWorkFactory(engine), ManualClock(dt.datetime.now(dt.UTC)))
    reading = {READ_ONLY_OPTION: True} if sqlite else {"isolation_level": "AUTOCOMMIT"}
    try:
        one = await _measure(ctx, engine, reading, month, CLINIC, rounds)
        every = await _measure(ctx, engine, reading, month, None, max(rounds // 4, 2))
    finally:
        await engine.dispose()
    return {"visits": visits, "month": month, "seed_s": seeded, "one_clinic": one, "all_clinics": every,
            "load": f"{load_before} → {load_average()}"}


def report(results: dict[str, dict]) -> str:
    month = next(iter(results.values()))["month"]
    lines = [f"Every red-flag rule over one month ({month[0]} to {month[1]}, Asia/Almaty) out of the digest "
             f"benchmark's table ({CLINICS} clinics, {PER_DAY} visits a clinic-day) with fraud added: `find_flags` "
             "(twelve statements, one per rule, and the flags built from them in Python: medians, shares, "
             "explanations) against the same twelve rules as hand-written SQL run back to back on one connection, "
             "read as find_flags reads (SQLite: one read transaction; PostgreSQL: outside one). Before timing, each "
             "rule's statement and its hand-written twin must answer the same groups, values and visit ids. Calls "
             "interleaved.", "",
             "| database | stored visits | scope | visits in the month | flags | flagged visits | find_flags p50 | "
             "hand-written p50 | ratio p50 | ratio p95 | seeding |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for scope, key in (("one clinic", "one_clinic"), (f"all {CLINICS} clinics", "all_clinics")):
            m = r[key]
            lines.append(f"| {name} | {r['visits']:,} | {scope} | {m['visits_in_month']:,} | {m['flags']} | "
                         f"{m['flagged_visits']:,} | {m['ours_p50'] * 1000:.1f} ms | {m['base_p50'] * 1000:.1f} ms | "
                         f"{m['ours_p50'] / m['base_p50']:.2f}× | {m['ours_p95'] / m['base_p95']:.2f}× | "
                         f"{r['seed_s']:.0f} s |")
    lines += ["", WHAT_IT_COSTS, "",
              "- load average (1, 5, 15 min) before → after each database's run: "
              + "; ".join(f"{name} {r['load']}" for name, r in results.items())]
    return "\n".join(lines)
