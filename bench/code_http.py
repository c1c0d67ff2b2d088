"""Code verification over HTTP on 127.0.0.1, database write included, vs. a bare aiohttp handler.

The real server (`python -m server`) and the bare handler each run as their own process; one load
generator process sends the same number of requests to each with the same concurrency. Every request to
the server is a real, correct code for its own visit, so every one ends in a committed verification.
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import aiohttp
from sqlalchemy import text

from bench.results import percentile
from bench.world import db_time, free_port, fresh_context, server_env, store_known_codes, wait_healthy
from core.services import registry
from core.services.api_keys import create_api_key

DOCTORS = 50
CONCURRENCY = 16
WHY_MISSED = (
    '- why missed: each verification is one transaction of about a dozen statements (row locks, the '
    'atomic attempt counter, the hourly failure caps, the code check, the state change, its event, the '
    'hash-chained audit row) and'
    " an fsync'd commit, and SQLite admits one writer at a time; the bare handler does no I/O at all, on "
    'a 2-core machine shared with the load generator. What would close the gap: fewer round trips (one '
    'CTE per check), several server processes on PostgreSQL, group commit. The soak shows the server '
    'holding the 100 verifications/s that matter, with its latencies in its own table.')



async def seed(database_url: str, visits: int) -> tuple[dict[str, str], str, list[tuple[int, str]]]:
    """A clinic with DOCTORS doctors and `visits` scheduled visits starting now, each with a known code."""
    keys, engine, ctx = await fresh_context(database_url)
    clinic = await registry.create_clinic(ctx, "Bench clinic")
    doctors = [await registry.add_doctor(ctx, clinic.id, f"Doctor {n}", f"+7701{1000000 + n}") for n in range(DOCTORS)]
    patient = (await registry.upsert_patient(ctx, clinic.id, "900101300017", "Bench Patient", "+77020000000")).patient
    api_key = (await create_api_key(ctx, clinic.id, ["webcam"], label="bench")).key
    now = ctx.clock.now()
    async with engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO visits (clinic_id, doctor_id, patient_id, start_at, duration_s, mode, service_code, state, "
            "created_at) VALUES (:clinic, :doctor, :patient, :start, 43200, 'in_person', 'A01', 'scheduled', :start)"
        ).bindparams(), [{"clinic": clinic.id, "doctor": doctors[n % DOCTORS].id, "patient": patient.id,
                          "start": db_time(engine, now)} for n in range(visits)])
        ids = [row[0] for row in (await conn.execute(text("SELECT id FROM visits ORDER BY id"))).all()]
        codes = await store_known_codes(conn, ctx, ids, now)
    await engine.dispose()
    return keys, api_key, codes




async def load(base: str, api_key: str, codes: list[tuple[int, str]]) -> dict:
    """Send one request per (visit, code) with CONCURRENCY in flight; every answer must be 'verified'."""
    latencies, outcomes = [], {}
    queue = iter(codes)
    headers = {"Authorization": f"Bearer {api_key}"}
    async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as s:
        async def worker():
            for visit_id, code in queue:
                t0 = time.perf_counter()
                async with s.post(f"{base}/api/v1/visits/{visit_id}/code", json={"code": code}) as response:
                    body = await response.json()
                latencies.append(time.perf_counter() - t0)
                key = f"{response.status} {body.get('result', body.get('code'))}"
                outcomes[key] = outcomes.get(key, 0) + 1
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
    return {"requests": len(latencies), "rps": len(latencies) / elapsed, "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99), "outcomes": outcomes}


async def run(database_url: str, *, requests: int) -> dict:
    keys, api_key, codes = await seed(database_url, requests)
    results = {}
    for name, argv in (("rastau", [sys.executable, "-m", "server"]),
                       ("bare", [sys.executable, "-m", "bench.bare_server"])):
        port = free_port()
        env = server_env(database_url, keys, RASTAU_SERVER_PORT=str(port), RASTAU_FACE_WORKERS="1")
        process = subprocess.Popen(argv + ([str(port)] if name == "bare" else []), env=env,
                                   stdout=subprocess.DEVNULL)
        try:
            async with aiohttp.ClientSession() as session:
                await wait_healthy(session, f"http://127.0.0.1:{port}", process)
            results[name] = await load(f"http://127.0.0.1:{port}", api_key, codes)
        finally:
            process.terminate()
            process.wait(timeout=60)
    if results["rastau"]["outcomes"] != {"200 verified": requests}:
        raise AssertionError(f"not every code verified: {results['rastau']['outcomes']}")
    return results


def report(by_db: dict[str, dict]) -> str:
    lines = [f"Correct codes for distinct visits ({DOCTORS} doctors), {CONCURRENCY} requests in flight from one "
             "load process; the real `python -m server` (auth, JSON, row locks, attempt counter, code check, "
             "state change and its event, commit) vs. a bare aiohttp handler parsing the same JSON. Target ≥ 0.3×.",
             "", "| database | requests | server req/s | p50 | p99 | bare req/s | ratio | target |",
             "|---|---|---|---|---|---|---|---|"]
    for db, r in by_db.items():
        ours, bare = r["rastau"], r["bare"]
        ratio = ours["rps"] / bare["rps"]
        lines.append(f"| {db} | {ours['requests']:,} | {ours['rps']:.0f} | {ours['p50'] * 1000:.1f} ms | "
                     f"{ours['p99'] * 1000:.1f} ms | {bare['rps']:.0f} | {ratio:.2f}× | "
                     f"{'met' if ratio >= 0.3 else 'MISSED'} |")
    if any(r["rastau"]["rps"] / r["bare"]["rps"] < 0.3 for r in by_db.values()):
        lines += ["", WHY_MISSED]
    return "\n".join(lines)
