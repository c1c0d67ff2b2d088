"""Code verification over HTTP on 127.0.0.1, database write included, beside PostgreSQL's own pgbench.

The real server (`python -m server`, with one or several processes) runs as its own process(es); one load
generator process sends correct codes for distinct visits, CONCURRENCY in flight, so every request ends in a
committed verification (attempt counted, code used, state change, its event, its audit row). pgbench's built-in
TPC-B-like transaction (five statements and a commit) runs at the same concurrency against the same PostgreSQL
in a scratch schema: the floor to compare against. A bare aiohttp handler parsing the same JSON is the ceiling
of HTTP alone.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bench.results import percentile
from bench.world import db_time, free_port, fresh_context, server_env, store_known_codes, wait_healthy
from core.services import registry
from core.services.api_keys import create_api_key

DOCTORS = 50
CLINICS = 5  # the spread setups: writes of different clinics never wait on one audit-chain head
CONCURRENCY = 16
PGBENCH_THREADS = 2
TARGET_VS_PGBENCH = 0.3
TARGET_SQLITE = 300.0
WHY_MISSED_PG = (
    "- why PostgreSQL misses where it does: the cost is the server's CPU per round trip, not the database's work. A "
    "verified check is four round trips (BEGIN; the attempt counted with the code and both caps read in its "
    "RETURNING; the state, its event, the code's use and the audit row appended to its clinic's chain in one "
    "statement; COMMIT; the API key is read from the process's memory), fewer than pgbench's, but each costs "
    "the server about 0.15–0.2 ms of CPU — SQLAlchemy, asyncpg, the event loop, and the kernel's share of a "
    "loopback socket write — where pgbench's C "
    "client spends microseconds. With every visit in one clinic, each check also waits its turn on that clinic's "
    "audit-chain head, held from the saving statement to COMMIT; spread over clinics, as an operator runs them, "
    "checks of different clinics never wait on each other. On 2 cores shared by the server, PostgreSQL, the load "
    "generator (itself Python) and other work (the load average), the rate is what the cores' time divided by the "
    "CPU all of them spend per check allows, and a second server process only adds context switches when no core "
    "is idle.")
WHY_MISSED_SQLITE = (
    "- why SQLite misses: it admits one writer at a time. Checks queued meanwhile now share one write transaction "
    "and one fsync'd COMMIT (group commit, each check in a savepoint of its own), and a check is seven statements "
    "(the attempt counted with the code and both caps read in its RETURNING, the code used, the state, its event, "
    "the audit row hashed by SQLite itself, the chain's head moved; BEGIN IMMEDIATE or a savepoint), run on the "
    "event loop's thread while the group holds the write lock: only BEGIN IMMEDIATE, the group's COMMIT and the "
    "key lookup (one statement, no transaction) go to aiosqlite's thread. What is left is the server's CPU per check "
    "(HTTP, the key lookup, the service, SQLAlchemy), in one process on cores shared with the load generator and "
    "whatever else runs (the load average); more server processes would only queue on SQLite's file lock, and "
    "PostgreSQL is the database for a higher rate.")

SQLITE_DURABILITY = (
    "- SQLite stays at synchronous=FULL: every commit is fsync'd before any check in it is answered. "
    "synchronous=NORMAL under WAL would save the fsync too, and survives a crash of the process, but a power loss "
    "takes back the last commits after they were answered, and the loss falls the wrong way here: a patient's "
    "\"I wasn't there\" acknowledged and then gone buries a dispute; an attempt counted and then gone gives a guesser "
    "its tries back; audit rows vanish from the chain's end with no trace unless a signed checkpoint covered them "
    "(it cannot manufacture evidence: a loss only removes a suffix of commits). Group commit gets the same saving "
    "with no loss: the checks queued while one writes share its transaction, and none is answered before the "
    "COMMIT's fsync.")


async def seed(database_url: str, visits_per_clinic: list[int]) -> tuple[dict[str, str], list[tuple[int, str, str]]]:
    """One clinic per entry of `visits_per_clinic`, sharing DOCTORS doctors, each with its webcam key and that many
    scheduled visits starting now, each with a known code: (visit id, code, the key of its clinic)."""
    keys, engine, ctx = await fresh_context(database_url)
    clinics = len(visits_per_clinic)
    made = []
    for n in range(clinics):
        clinic = await registry.create_clinic(ctx, f"Bench clinic {n + 1}")
        doctors = [await registry.add_doctor(ctx, clinic.id, f"Doctor {n}.{d}", f"+7701{1000000 + n * DOCTORS + d}")
                   for d in range(DOCTORS // clinics)]
        patient = (await registry.upsert_patient(ctx, clinic.id, "900101300017", "Bench Patient",
                                                 f"+7702{n:07d}")).patient
        api_key = (await create_api_key(ctx, clinic.id, ["webcam"], label="bench")).key
        made.append((clinic.id, [doctor.id for doctor in doctors], patient.id, api_key))
    now = ctx.clock.now()
    async with engine.begin() as conn:
        rows = [{"clinic": clinic_id, "doctor": doctor_ids[n % len(doctor_ids)], "patient": patient_id,
                 "start": db_time(engine, now)}
                for (clinic_id, doctor_ids, patient_id, _), visits in zip(made, visits_per_clinic, strict=True)
                for n in range(visits)]
        await conn.execute(text(
            "INSERT INTO visits (clinic_id, doctor_id, patient_id, start_at, duration_s, mode, service_code, state, "
            "created_at) VALUES (:clinic, :doctor, :patient, :start, 43200, 'in_person', 'A01', 'scheduled', :start)"
        ).bindparams(), rows)
        visit_rows = (await conn.execute(text("SELECT id, clinic_id FROM visits ORDER BY id"))).all()
        codes = await store_known_codes(conn, ctx, [row[0] for row in visit_rows], now)
    await engine.dispose()
    key_of = {clinic_id: api_key for clinic_id, _, _, api_key in made}
    clinic_of = dict(visit_rows)
    return keys, [(visit_id, code, key_of[clinic_of[visit_id]]) for visit_id, code in codes]


async def load(base: str, codes: list[tuple[int, str, str]]) -> dict:
    """Send one request per (visit, code, key) with CONCURRENCY in flight, each on a kept-alive connection of its
    own; every answer must be 'verified'.

    The client is HTTP/1.1 written straight on asyncio streams, each request's bytes made before the clock starts:
    it shares the cores with the server and PostgreSQL, as pgbench's C client does, and should take as little of
    them as it can (aiohttp's client spent 0.25-0.6 ms of CPU a request, a fifth of the server's)."""
    host, _, port = base.removeprefix("http://").partition(":")
    requests = [_request(host, port, visit_id, code, api_key) for visit_id, code, api_key in codes]
    latencies, outcomes = [], {}
    queue = iter(requests)

    async def worker():
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for request in queue:
                t0 = time.perf_counter()
                writer.write(request)
                status, body = await _response(reader)
                latencies.append(time.perf_counter() - t0)
                key = f"{status} {body.get('result', body.get('code'))}"
                outcomes[key] = outcomes.get(key, 0) + 1
        finally:
            writer.close()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    return {"requests": len(latencies), "rps": len(latencies) / elapsed, "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99), "outcomes": outcomes}


def _request(host: str, port: str, visit_id: int, code: str, api_key: str) -> bytes:
    body = json.dumps({"code": code}).encode()
    return (f"POST /api/v1/visits/{visit_id}/code HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {api_key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict]:
    """One response's status and JSON body; the server must keep the connection open and say the body's length."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in head[1:])}
    if headers.get("connection", "").lower() == "close" or "content-length" not in headers:
        raise RuntimeError(f"the server answered {head[0]!r} without a kept-alive, sized body: {headers}")
    return int(head[0].split()[1]), json.loads(await reader.readexactly(int(headers["content-length"])))


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process and all its descendants (every server process, face workers included)."""
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        own = (int(fields[11]) + int(fields[12])) / ticks
        children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        return 0.0
    return own + sum(cpu_seconds(int(child)) for child in children)


async def _wait_warm(base: str, process: subprocess.Popen) -> None:
    """Until /readyz answers 200 on ten fresh connections in a row: every server process has its face worker warm,
    so no model loading competes with the load for the cores (or counts in the server's CPU)."""
    ready_in_a_row = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for _ in range(3000):
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            async with session.get(base + "/readyz") as response:
                ready_in_a_row = ready_in_a_row + 1 if response.status == 200 else 0
            if ready_in_a_row == 10:
                return
            await asyncio.sleep(0.1)
    raise RuntimeError("the server's face workers did not become ready")


@contextlib.asynccontextmanager
async def _serving(argv: list[str], env: dict[str, str], port: int) -> AsyncIterator[subprocess.Popen]:
    """The server started, waited for until warm, and stopped after the block."""
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as session:
            await wait_healthy(session, f"http://127.0.0.1:{port}", process)
        await _wait_warm(f"http://127.0.0.1:{port}", process)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=60)


async def _measured_load(process: subprocess.Popen, port: int, codes: list[tuple[int, str, str]]) -> dict:
    """Load the running server; with the CPU the server and the load generator spent per request."""
    server_before, client_before = cpu_seconds(process.pid), sum(os.times()[:2])
    result = await load(f"http://127.0.0.1:{port}", codes)
    result["server_cpu_ms"] = (cpu_seconds(process.pid) - server_before) * 1000 / result["requests"]
    result["client_cpu_ms"] = (sum(os.times()[:2]) - client_before) * 1000 / result["requests"]
    return result


async def run(database_url: str, *, requests: int, setups: list[tuple[int, int]], bare: bool = True) -> dict:
    """The server in each setup (server processes, clinics) in turn, `requests` fresh visits each spread evenly
    over the setup's clinics, then the bare handler (unless not `bare`). Setups with the same number of server
    processes load one server, started and warmed once, one after another (each load measures its own CPU)."""
    most = max(clinics for _, clinics in setups)
    needed = [sum(requests // clinics for _, clinics in setups if n < clinics) for n in range(most)]
    keys, codes = await seed(database_url, needed)
    unused: dict[str, list[tuple[int, str, str]]] = {}  # each clinic's visits not yet checked, by its key
    for visit in codes:
        unused.setdefault(visit[2], []).append(visit)
    queues = list(unused.values())
    measured = {}
    for count in dict.fromkeys(count for count, _ in setups):
        port = free_port()
        env = server_env(database_url, keys, RASTAU_SERVER_PORT=str(port), RASTAU_FACE_WORKERS="1",
                         RASTAU_SERVER_PROCESSES=str(count))
        async with _serving([sys.executable, "-m", "server"], env, port) as process:
            for clinics in [clinics for n, clinics in setups if n == count]:
                per_clinic = requests // clinics
                mine = sorted(visit for queue in queues[:clinics] for visit in queue[:per_clinic])  # interleaved
                for queue in queues[:clinics]:
                    del queue[:per_clinic]
                result = await _measured_load(process, port, mine)
                if result["outcomes"] != {"200 verified": len(mine)}:
                    raise AssertionError(f"not every code verified: {result['outcomes']}")
                measured[(count, clinics)] = result
    results: dict = {setup: measured[setup] for setup in setups}
    if bare:
        port = free_port()
        async with _serving([sys.executable, "-m", "bench.bare_server", str(port)], server_env(database_url, keys),
                            port) as process:
            results["bare"] = await _measured_load(process, port, codes[:requests])
    return results


async def pgbench(database_url: str, seconds: int) -> dict:
    """pgbench's TPC-B-like transaction at CONCURRENCY clients for `seconds`, on its tables in a scratch schema
    created and dropped here (a scratch database's CREATE and DROP wait on checkpoints, for seconds on a busy
    machine). {"skipped": reason} when pgbench is not installed."""
    binary = shutil.which("pgbench")
    if binary is None:
        return {"skipped": "pgbench is not installed (Debian: apt-get install postgresql-client)"}
    import asyncpg

    url = make_url(database_url)
    admin_dsn = url.set(drivername="postgresql").difference_update_query(["search_path"]).render_as_string(False)
    scratch = f"rastau_pgbench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{scratch}"')
        args = ["-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "postgres"]
        env = {**os.environ, "PGOPTIONS": f"-c search_path={scratch}",
               **({"PGPASSWORD": url.password} if url.password else {})}
        subprocess.run([binary, *args, "-i", "-q", url.database or "postgres"], check=True, capture_output=True,
                       env=env)
        done = subprocess.run([binary, *args, "-c", str(CONCURRENCY), "-j", str(PGBENCH_THREADS), "-T", str(seconds),
                               url.database or "postgres"], check=True, capture_output=True, text=True, env=env)
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{scratch}" CASCADE')
        await conn.close()
    tps = re.search(r"tps = ([0-9.]+)", done.stdout)
    latency = re.search(r"latency average = ([0-9.]+) ms", done.stdout)
    return {"tps": float(tps.group(1)), "latency_ms": float(latency.group(1)) if latency else None,
            "seconds": seconds}


def mean_floor(runs: list[dict]) -> dict:
    """pgbench run before and after the server's runs, as one floor: the mean rate, with both runs named."""
    if any("skipped" in run for run in runs):
        return runs[0]
    return {"tps": sum(r["tps"] for r in runs) / len(runs), "runs": [r["tps"] for r in runs],
            "latency_ms": sum(r["latency_ms"] or 0.0 for r in runs) / len(runs), "seconds": runs[0]["seconds"]}


def load_average() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def report(by_db: dict[str, dict], floor: dict, load_before: str, load_after: str) -> str:
    lines = [f"Correct codes for distinct visits ({DOCTORS} doctors, in one clinic or spread over several, each "
             f"clinic with its own key and audit chain), {CONCURRENCY} requests in flight from one load-generator "
             "process; the real `python -m server` (auth, JSON, the attempt counted, the code and both hourly caps "
             "read, the code used, the state change, its event and audit row, commit) with 1 or more processes "
             "(`RASTAU_SERVER_PROCESSES`). Floor: PostgreSQL's `pgbench` TPC-B-like "
             f"transaction (five statements and a commit), {CONCURRENCY} clients, {PGBENCH_THREADS} threads, same "
             "PostgreSQL, run before and after. Targets: PostgreSQL ≥ "
             f"{TARGET_VS_PGBENCH}× pgbench's rate; SQLite ≥ {TARGET_SQLITE:.0f} checks/s. A bare aiohttp handler "
             "parsing the same JSON shows what HTTP alone costs on this machine.", ""]
    if "skipped" in floor:
        lines += [f"- pgbench: not run — {floor['skipped']}", ""]
    else:
        tps_runs = floor.get("runs", [floor["tps"]])
        runs = " and ".join(f"{tps:,.0f}" for tps in tps_runs)
        which = "the mean of a run before and a run after" if len(tps_runs) > 1 else "one run before"  # 1: smoke
        lines += [f"- pgbench TPC-B-like, {CONCURRENCY} clients: **{floor['tps']:,.0f} transactions/s**, {which} "
                  f"the server's ({runs}; latency average {floor['latency_ms']:.1f} ms, {floor['seconds']} s each)",
                  ""]
    lines += ["| database | server processes | clinics | requests | checks/s | p50 | p99 | server CPU per check | "
              "vs. pgbench | target |", "|---|---|---|---|---|---|---|---|---|---|"]
    for db, results in by_db.items():
        for setup, r in results.items():
            if setup == "bare":
                continue
            count, clinics = setup
            if db == "PostgreSQL" and "tps" in floor:
                ratio = r["rps"] / floor["tps"]
                met = ratio >= TARGET_VS_PGBENCH
                versus, target = f"{ratio:.2f}×", f"≥ {TARGET_VS_PGBENCH}×: {'met' if met else 'MISSED'}"
            elif db == "PostgreSQL":
                versus, target = "—", "no pgbench"
            else:
                met = r["rps"] >= TARGET_SQLITE
                versus, target = "—", f"≥ {TARGET_SQLITE:.0f}/s: {'met' if met else 'MISSED'}"
            lines.append(f"| {db} | {count} | {clinics} | {r['requests']:,} | {r['rps']:.0f} | "
                         f"{r['p50'] * 1000:.1f} ms | {r['p99'] * 1000:.1f} ms | {r['server_cpu_ms']:.1f} ms | "
                         f"{versus} | {target} |")
    bare = ", ".join(f"{db} run {r['bare']['rps']:.0f} req/s ({r['bare']['server_cpu_ms']:.2f} ms of its CPU each)"
                     for db, r in by_db.items() if "bare" in r)
    client = max(r["client_cpu_ms"] for results in by_db.values() for r in results.values())
    lines += ["", f"- bare aiohttp handler, same load generator: {bare}; the load generator itself spends up to "
                  f"{client:.2f} ms of CPU per request",
              f"- load average (1, 5, 15 min) before → after: {load_before} → {load_after}"]
    pg = by_db.get("PostgreSQL", {})
    if "tps" in floor and any(r["rps"] / floor["tps"] < TARGET_VS_PGBENCH for k, r in pg.items() if k != "bare"):
        lines.append(WHY_MISSED_PG)
    if any(r["rps"] < TARGET_SQLITE for k, r in by_db.get("SQLite", {}).items() if k != "bare"):
        lines.append(WHY_MISSED_SQLITE)
    if "SQLite" in by_db:
        lines.append(SQLITE_DURABILITY)
    return "\n".join(lines)
