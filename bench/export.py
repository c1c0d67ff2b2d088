"""The auditors' signed export: rows per second through the real server, every page fetched and its signature
verified, against a bare dump of the same rows (one hand-written query, written out unsigned) in the same run.

The visits table is the digest benchmark's (bench/digest.py: 20 clinics, 200 visits a clinic-day, seeded by SQL);
the period is every seeded day, so every stored visit is exported. An auditor of all clinics pages through
``/api/v1/audit/visits`` of a real ``python -m server`` (a process of its own) following each page's ``Link`` until
there is none, and verifies each page with the public key from ``/api/v1/audit/signing-key``
(core.signed_file.verify): what an auditor's script does. Each page is also a read recorded in the audit log (one
row per clinic read, in that clinic's chain) before its first byte, as in production.
"""
from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
import subprocess
import sys
import time

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import bindparam, text

from bench.code_http import load_average
from bench.digest import CLINICS, FIRST_DAY, _seed_sql
from bench.results import median
from bench.world import free_port, fresh_context, server_env, wait_healthy
from core import signed_file
from core.clock import ALMATY, local_day_bounds
from core.db.engine import READ_ONLY_OPTION, is_sqlite
from core.db.tables import UtcDateTime
from core.services.api_keys import create_auditor_key
from core.services.audit_export import MAX_PAGE
from core.services.auditors import add_auditor

PER_DAY = 200  # visits a clinic-day, as bench/digest.py seeds them
API = "/api/v1/audit"
# The same rows and columns the export reads (core.db.queries' evidence page), as one would write them by hand.
BARE_DUMP = text("""
SELECT v.id, v.clinic_id, c.name AS clinic, v.doctor_id, d.full_name AS doctor, v.patient_id, p.iin, v.mode,
  v.service_code, v.start_at, v.created_at, v.state, v.verified_by, v.verified_at, v.attended_claim_at,
  v.registered_late,
  EXISTS (SELECT 1 FROM visit_events e WHERE e.visit_id = v.id AND e.step = 'verify'
          AND e.detail = 'fresh_reference') AS fresh_reference,
  (p.chat_id IS NOT NULL AND NOT p.chat_blocked AND NOT EXISTS (
     SELECT 1 FROM chat_users u WHERE u.chat_id = p.chat_id AND u.stopped)) AS reachable
FROM visits v JOIN doctors d ON d.id = v.doctor_id JOIN patients p ON p.id = v.patient_id
  JOIN clinics c ON c.id = v.clinic_id
WHERE v.start_at >= :start AND v.start_at < :end
ORDER BY v.id
""").bindparams(bindparam("start", type_=UtcDateTime), bindparam("end", type_=UtcDateTime)).columns(
    start_at=UtcDateTime, created_at=UtcDateTime, verified_at=UtcDateTime, attended_claim_at=UtcDateTime)
MOMENTS = ("start_at", "created_at", "verified_at", "attended_claim_at")


def _period(visits: int) -> tuple[dt.date, dt.date]:
    days = max(visits // (CLINICS * PER_DAY), 1)
    return FIRST_DAY, FIRST_DAY + dt.timedelta(days=days - 1)


def _dump(rows: list, fmt: str) -> bytes:
    """What a bare dump writes: every row as it came, moments in ISO 8601, no masking, no signature."""
    out = io.StringIO()
    if fmt == signed_file.JSONL:
        for row in rows:
            record = dict(row._mapping)
            for name in MOMENTS:
                record[name] = record[name].isoformat() if record[name] is not None else None
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    else:
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(rows[0]._fields if rows else [])
        writer.writerows(rows)
    return out.getvalue().encode()


async def _export(session: aiohttp.ClientSession, base: str, fmt: str, period: tuple[dt.date, dt.date],
                  public: Ed25519PublicKey, page: int) -> dict:
    """Every page of the period's export, each verified as it arrives; what an auditor's script does."""
    url: str | None = f"{base}{API}/visits?from={period[0]}&to={period[1]}&format={fmt}&limit={page}"
    pages, rows, size, verifying, files = 0, 0, 0, 0.0, []
    while url is not None:
        async with session.get(url) as response:
            data = await response.read()
            if response.status != 200:
                raise AssertionError(f"export page answered {response.status}: {data[:300]!r}")
            link = response.headers.get("Link")
        t0 = time.perf_counter()
        verdict = signed_file.verify(data, public)
        verifying += time.perf_counter() - t0
        if not verdict.valid or verdict.record is None:
            raise AssertionError(f"page {pages} does not verify: {verdict.message}")
        pages, rows, size = pages + 1, rows + verdict.record["rows"], size + len(data)
        files.append(data)
        url = base + link[1:link.index(">")] if link else None
    return {"pages": pages, "rows": rows, "bytes": size, "verify_s": verifying, "files": files}


def _exported_ids(files: list[bytes]) -> list[int]:
    """The visit ids of a JSON-lines export, in order (its signature lines left out)."""
    return [json.loads(line)["visit_id"] for data in files for line in data.splitlines()[:-1]]


async def run(database_url: str, *, visits: int, rounds: int, page: int = MAX_PAGE) -> dict:
    keys, engine, ctx = await fresh_context(database_url)
    sqlite = is_sqlite(database_url)
    t0 = time.perf_counter()
    async with engine.begin() as conn:
        for statement in _seed_sql(sqlite, visits, PER_DAY):
            await conn.exec_driver_sql(statement)
    seeded = time.perf_counter() - t0
    auditor = await add_auditor(ctx, "Bench Auditor", "+77019990000", all_clinics=True)
    key = (await create_auditor_key(ctx, auditor.id, label="bench")).key
    period = _period(visits)
    start, end = local_day_bounds(period[0], ALMATY)[0], local_day_bounds(period[1], ALMATY)[1]
    reading = {READ_ONLY_OPTION: True} if sqlite else {"isolation_level": "AUTOCOMMIT"}

    async def bare_dump(fmt: str) -> tuple[int, bytes]:
        async with engine.connect() as conn:
            await conn.execution_options(**reading)
            rows = (await conn.execute(BARE_DUMP, {"start": start, "end": end})).all()
        return len(rows), _dump(rows, fmt)

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "server"], stdout=subprocess.DEVNULL,
                               env=server_env(database_url, keys, RASTAU_SERVER_PORT=str(port),
                                              RASTAU_FACE_WORKERS="1"))
    results: dict = {"visits": visits, "seed_s": seeded, "page": page, "period": period,
                     "load_before": load_average()}
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
            await wait_healthy(session, base, process)
            async with session.get(f"{base}{API}/signing-key") as response:
                public = Ed25519PublicKey.from_public_bytes(base64.b64decode((await response.json())["public_key"]))
            for fmt in (signed_file.JSONL, signed_file.CSV):
                ours, bare, checked = [], [], {}
                for _ in range(rounds):  # interleaved, so the machine's noise hits both alike
                    t0 = time.perf_counter()
                    exported = await _export(session, base, fmt, period, public, page)
                    ours.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    count, dumped = await bare_dump(fmt)
                    bare.append(time.perf_counter() - t0)
                    checked = {k: v for k, v in exported.items() if k != "files"}
                    if exported["rows"] != count:
                        raise AssertionError(f"export gave {exported['rows']} rows, the bare dump {count}")
                    if fmt == signed_file.JSONL and not results.get("same_ids"):
                        ids = [int(json.loads(line)["id"]) for line in dumped.splitlines()]
                        if _exported_ids(exported["files"]) != ids:
                            raise AssertionError("export and bare dump list different visits")
                        results["same_ids"] = True
                results[fmt] = {**checked, "ours_s": median(ours), "bare_s": median(bare), "bare_bytes": len(dumped),
                                "runs": len(ours)}
    finally:
        process.terminate()
        process.wait(timeout=60)
        await engine.dispose()
    results["load_after"] = load_average()
    return results


def report(results: dict[str, dict]) -> str:
    any_result = next(iter(results.values()))
    first, last = any_result["period"]
    most = " (the most a page holds)" if any_result["page"] == MAX_PAGE else ""
    lines = [f"An auditor of all clinics exports every visit of {first} – {last} ({any_result['visits']:,} visits "
             "stored, all in the period) from a real `python -m server` (one process, its own), "
             f"{any_result['page']:,} rows a page{most}, following each page's `Link` to the "
             "end and verifying every page's signature with the public key (`core.signed_file.verify`, in the "
             "client); each page is recorded in the audit log (one row per clinic read) before it is served. "
             "Baseline in the same run, alternating with the export: the same rows and columns by one hand-written "
             "SQL query in one read, written as JSON lines / CSV into memory with no signing, masking, paging or "
             "HTTP: what a bare dump costs. Medians of the runs (runs per format: "
             f"{any_result[signed_file.JSONL]['runs']}); load average (1, 5, 15 min) "
             + "; ".join(f"{db} before {r['load_before']}, after {r['load_after']}" for db, r in results.items())
             + ".", "",
             "| database | format | rows | pages | signed export | rows/s | of which verifying | bare dump | "
             "rows/s | export / bare dump |", "|---|---|---|---|---|---|---|---|---|---|"]
    for db, r in results.items():
        for fmt in (signed_file.JSONL, signed_file.CSV):
            x = r[fmt]
            lines.append(f"| {db} | {fmt.upper()} | {x['rows']:,} | {x['pages']} | {x['ours_s']:.2f} s | "
                         f"**{x['rows'] / x['ours_s']:,.0f}** | {x['verify_s']:.2f} s | {x['bare_s']:.2f} s | "
                         f"{x['rows'] / x['bare_s']:,.0f} | {x['ours_s'] / x['bare_s']:.1f}× |")
    lines += ["", "- no target was set for the export's speed (issue 12 asks for its rows per second); the ratio says "
              "what the signed, audited, paged export costs over the cheapest possible dump of the same rows. The "
              "export's rows and visit ids were checked equal to the bare dump's before the figures were kept."]
    return "\n".join(lines)
