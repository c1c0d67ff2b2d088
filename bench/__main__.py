"""`python -m bench [--smoke] [NAME ...]`: run the benchmarks and write bench/RESULTS.md.

--smoke runs tiny sizes only to prove the benchmarks still work (CI does this); it writes nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import uuid

from bench import code_http, dashboard, digest, dispatcher, export, face, face_load, flags, liveness, soak
from bench.results import write_section

PG_URL = os.environ.get("RASTAU_BENCH_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("RASTAU_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


async def _pg_schema(create: bool, schema: str) -> None:
    import asyncpg
    conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg", "postgresql"))
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"' if create else f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await conn.close()


async def _on_both_databases(name: str, run, workdir: str, **kwargs) -> dict:
    """``run(url, **kwargs)`` on a fresh SQLite file, then in a PostgreSQL schema of its own (dropped after)."""
    sqlite_path = os.path.join(workdir, f"{name}-{uuid.uuid4().hex[:6]}.db")
    results = {"SQLite": await run(f"sqlite+aiosqlite:///{sqlite_path}", **kwargs)}
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    await _pg_schema(True, schema)
    try:
        results["PostgreSQL"] = await run(f"{PG_URL}?search_path={schema}", **kwargs)
    finally:
        await _pg_schema(False, schema)
    return results


async def bench_digest(smoke: bool, workdir: str) -> None:
    visits, rounds = (20_000, 5) if smoke else (1_000_000, 200)
    results = await _on_both_databases("digest", digest.run, workdir, visits=visits, rounds=rounds)
    write_section("Digest: one clinic-day out of a large table", digest.report(results), smoke=smoke)


async def bench_flags(smoke: bool, workdir: str) -> None:
    # the smoke: three days of visits (a death on day two has visits after it: every rule that finds groups in a
    # larger table finds some here too), two rounds of timing
    visits, rounds = (12_000, 2) if smoke else (1_000_000, 12)
    results = await _on_both_databases("flags", flags.run, workdir, visits=visits, rounds=rounds)
    write_section("Red flags: one clinic-month and all clinics, against hand-written SQL", flags.report(results),
                  smoke=smoke)


async def bench_export(smoke: bool, workdir: str) -> None:
    sizes = {"visits": 4_000, "rounds": 1, "page": 1000} if smoke else {"visits": 100_000, "rounds": 3}
    sqlite_path = os.path.join(workdir, f"export-{uuid.uuid4().hex[:6]}.db")
    results = {"SQLite": await export.run(f"sqlite+aiosqlite:///{sqlite_path}", **sizes)}
    if not smoke:  # the smoke run proves the benchmark works; the same server code reads PostgreSQL
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        await _pg_schema(True, schema)
        try:
            results["PostgreSQL"] = await export.run(f"{PG_URL}?search_path={schema}", **sizes)
        finally:
            await _pg_schema(False, schema)
    write_section("Auditors' export", export.report(results), smoke=smoke)


async def bench_face_latency(smoke: bool, workdir: str) -> None:
    result = face.run(rounds=1, limit=4) if smoke else face.run(rounds=5)
    write_section("Face verify latency: pipeline vs. naive vs. floor", face.report(result), smoke=smoke)


async def bench_liveness(smoke: bool, workdir: str) -> None:
    result = await asyncio.to_thread(liveness.run, rounds=1 if smoke else 9)
    server = await liveness.run_server(workdir, at_once=[1] if smoke else [2, 4, 8], waves=1 if smoke else 2,
                                       workers=1 if smoke else 2, idle_seconds=1.0 if smoke else 10.0)
    write_section("Liveness: capture decision vs. the single-frame check", liveness.report(result, server),
                  smoke=smoke)


async def bench_dispatcher(smoke: bool, workdir: str) -> None:
    def sqlite_url() -> str:
        return f"sqlite+aiosqlite:///{os.path.join(workdir, f'outbox-{uuid.uuid4().hex[:6]}.db')}"
    sizes = {"capped_count": 60, "ceiling_count": 200} if smoke else {"capped_count": 3000, "ceiling_count": 5000}
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    await _pg_schema(True, schema)
    try:
        result = await dispatcher.run(sqlite_url, shared_database_url=f"{PG_URL}?search_path={schema}",
                                      redis_url=REDIS_URL, **sizes)
    finally:
        await _pg_schema(False, schema)
    write_section("Dispatcher: Telegram's cap held, and the ceiling without it", dispatcher.report(result),
                  smoke=smoke)


async def bench_code_http(smoke: bool, workdir: str) -> None:
    # the smoke: 48 requests (three per connection in flight) on each server setup, one pgbench run and one bare
    # handler's, since a second of either only measures again what the first proved runs
    requests, pgbench_seconds = (48, 1) if smoke else (4000, 20)
    load_before = code_http.load_average()
    floors = [await code_http.pgbench(PG_URL, pgbench_seconds)]
    results = {"SQLite": await code_http.run(
        f"sqlite+aiosqlite:///{os.path.join(workdir, f'codes-{uuid.uuid4().hex[:6]}.db')}", requests=requests,
        setups=[(1, 1)])}
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    await _pg_schema(True, schema)
    try:
        spread = [(1, code_http.CLINICS)] if smoke else [(1, code_http.CLINICS), (2, code_http.CLINICS)]
        results["PostgreSQL"] = await code_http.run(f"{PG_URL}?search_path={schema}", requests=requests,
                                                    setups=[(1, 1), *spread], bare=not smoke)
    finally:
        await _pg_schema(False, schema)
    if not smoke:
        floors.append(await code_http.pgbench(PG_URL, pgbench_seconds))  # before and after: the machine's load drifts
    write_section("Code verification over HTTP vs. pgbench", code_http.report(
        results, code_http.mean_floor(floors), load_before, code_http.load_average()), smoke=smoke)


async def bench_face_load(smoke: bool, workdir: str) -> None:
    result = await face_load.run(workdir, workers=[1] if smoke else [1, 2], frames_per_run=6 if smoke else 80)
    write_section("Face throughput, event-loop responsiveness and memory under load", face_load.report(result),
                  smoke=smoke)


async def bench_soak(smoke: bool, workdir: str) -> None:
    duration = 4.0 if smoke else float(os.environ.get("RASTAU_SOAK_SECONDS", 300))
    chat_patients = 10 if smoke else soak.CHAT_PATIENTS  # the smoke's few chat visits need few linked chats
    rates = {"code_rate": 25.0} if smoke else {}  # the smoke: a quarter of the code checks, every kind still mixed
    results = {"SQLite": await soak.run(
        workdir, f"sqlite+aiosqlite:///{os.path.join(workdir, f'soak-{uuid.uuid4().hex[:6]}.db')}",
        duration=duration, chat_patients=chat_patients, **rates)}
    if not smoke:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        await _pg_schema(True, schema)
        try:
            results["PostgreSQL"] = await soak.run(workdir, f"{PG_URL}?search_path={schema}", duration=duration)
        finally:
            await _pg_schema(False, schema)
    write_section("Soak: codes, faces and chat delivery at a steady mix", soak.report(results), smoke=smoke)
    problems = [f"{db}: {p}" for db, r in results.items() for p in soak.check(r)]
    if smoke and problems:
        raise SystemExit("soak smoke run failed:\n" + "\n".join(problems))


async def bench_dashboard(smoke: bool, workdir: str) -> None:
    # the smoke: one day of visits (the same checks and statements per read as five days'); five rounds, since the
    # rounds pick the doctors whose scorecards are read
    visits, rounds = (4_000, 5) if smoke else (1_000_000, 40)
    results = await _on_both_databases("dashboard", dashboard.run, workdir, visits=visits, rounds=rounds)
    write_section("Web dashboard: its pages with 1,000,000 visits stored", dashboard.report(results), smoke=smoke)


async def bench_whatsapp(smoke: bool, workdir: str) -> None:
    """Issue 14: WhatsApp's limits held by the real dispatcher and channel (bench/whatsapp.py)."""
    from bench import whatsapp
    url = f"sqlite+aiosqlite:///{os.path.join(workdir, f'whatsapp-{uuid.uuid4().hex[:6]}.db')}"
    sizes = dict(count=40, recipients=20, rate=80.0, pair_span=1.0) if smoke else dict(
        count=4000, recipients=2000, rate=80.0, pair_span=6.0)
    result = await whatsapp.run(url, **sizes)
    write_section("WhatsApp: the business number's rate and the per-patient pace held", whatsapp.report(result),
                  smoke=smoke)


BENCHES = {"face": bench_face_latency, "face_load": bench_face_load, "liveness": bench_liveness,
           "codes": bench_code_http,
           "dispatcher": bench_dispatcher, "digest": bench_digest, "flags": bench_flags, "export": bench_export,
           "soak": bench_soak, "dashboard": bench_dashboard,
           "whatsapp": bench_whatsapp}  # issue 14


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; print, write nothing")
    parser.add_argument("--workdir", default=tempfile.gettempdir(), help="where scratch databases go")
    parser.add_argument("names", nargs="*", choices=[[], *BENCHES], help="benchmarks to run (default: all)")
    args = parser.parse_args(argv)
    for name in args.names or list(BENCHES):
        print(f"== {name}", file=sys.stderr)
        asyncio.run(BENCHES[name](args.smoke, args.workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
