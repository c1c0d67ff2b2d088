"""Face verification under concurrent load through the real server: frames/s by worker count, the event
loop's responsiveness meanwhile (/healthz p99), and the memory the server and its workers hold at peak.

Every request is a webcam frame of the enrolled patient for a visit of its own, so each one is a full
decode → detect → encode → compare → verify → commit.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from bench.face import webcam_frames
from bench.results import median, percentile
from bench.world import free_port, fresh_context, server_env, wait_healthy
from core.services import registry, visits
from core.services.api_keys import create_api_key

PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (the face workers), from /proc."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            total += int(Path(f"/proc/{current}/statm").read_text().split()[1]) * PAGE
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


async def seed(database_url: str, frames: int) -> tuple[dict, str, list[int]]:
    from server.face.pipeline import analyse_frame
    keys, engine, ctx = await fresh_context(database_url)
    clinic = await registry.create_clinic(ctx, "Bench clinic")
    doctor = await registry.add_doctor(ctx, clinic.id, "Doctor", "+77011000000")
    patient = (await registry.upsert_patient(ctx, clinic.id, "900101300017", "Bench Patient", "+77020000000")).patient
    await registry.record_consent(ctx, clinic.id, patient.id, "bench")
    reference = analyse_frame((Path(__file__).resolve().parent.parent / "tests/fixtures/faces/obama/obama1.jpg")
                              .read_bytes())
    await registry.enrol_face(ctx, clinic.id, patient.id, [reference.encoding])
    api_key = (await create_api_key(ctx, clinic.id, ["webcam"], label="bench")).key
    start = ctx.clock.now() - dt.timedelta(minutes=5)
    visit_ids = [(await visits.register_visit(ctx, clinic_id=clinic.id, doctor_id=doctor.id, patient_id=patient.id,
                                              start=start, duration=dt.timedelta(hours=8), mode="in_person",
                                              service_code="A01")).id for _ in range(frames)]
    await engine.dispose()
    return keys, api_key, visit_ids


async def _load(base: str, api_key: str, visit_ids: list[int], frames: list[bytes], concurrency: int,
                rss_of) -> dict:
    latencies, health, decisions, peak = [], [], {}, 0
    queue = iter(enumerate(visit_ids))
    done = asyncio.Event()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {api_key}"}) as session:
        async def worker():
            for n, visit_id in queue:
                t0 = time.perf_counter()
                async with session.post(f"{base}/api/v1/visits/{visit_id}/face", data=frames[n % len(frames)],
                                        headers={"Content-Type": "image/jpeg"}) as response:
                    body = await response.json()
                latencies.append(time.perf_counter() - t0)
                key = f"{response.status} {body.get('decision', body.get('code'))}"
                decisions[key] = decisions.get(key, 0) + 1

        async def probe():
            nonlocal peak
            while not done.is_set():
                t0 = time.perf_counter()
                async with session.get(f"{base}/healthz") as response:
                    await response.read()
                health.append(time.perf_counter() - t0)
                peak = max(peak, rss_of())
                await asyncio.sleep(0.02)

        prober = asyncio.create_task(probe())
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        done.set()
        await prober
    return {"frames": len(latencies), "fps": len(latencies) / elapsed, "p50": median(latencies),
            "p95": percentile(latencies, 95), "healthz_p99": percentile(health, 99),
            "healthz_samples": len(health), "decisions": decisions, "peak_rss": peak}


async def run(workdir: str, *, workers: list[int], frames_per_run: int) -> dict:
    frames = [data for name, data in webcam_frames() if name.startswith("obama/obama") and "240p" not in name]
    results = {}
    for count in workers:
        url = f"sqlite+aiosqlite:///{os.path.join(workdir, f'faces-{count}-{time.time_ns()}.db')}"
        keys, api_key, visit_ids = await seed(url, frames_per_run)
        port = free_port()
        env = server_env(url, keys, RASTAU_SERVER_PORT=str(port), RASTAU_FACE_WORKERS=str(count))
        process = subprocess.Popen([sys.executable, "-m", "server"], env=env, stdout=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as session:
                await wait_healthy(session, base, process)
                for _ in range(600):  # face workers warm: /readyz says so
                    async with session.get(base + "/readyz") as response:
                        if response.status == 200:
                            break
                    await asyncio.sleep(0.1)
            idle = tree_rss(process.pid)
            result = await _load(base, api_key, visit_ids, frames, concurrency=2 * count,
                                 rss_of=functools.partial(tree_rss, process.pid))
            results[count] = {**result, "idle_rss": idle}
        finally:
            process.terminate()
            process.wait(timeout=60)
        if set(results[count]["decisions"]) != {"200 match"}:
            raise AssertionError(f"unexpected decisions: {results[count]['decisions']}")
    return results


def report(results: dict) -> str:
    base = results[min(results)]
    lines = [f"The real `python -m server` on SQLite, {os.cpu_count()} cores shared by the server, its face workers "
             "and the load generator; 2 requests in flight per worker, every frame a 640×480 JPEG of the "
             "enrolled patient for its own visit (all answered `match`); `/healthz` polled every 20 ms meanwhile; "
             "RSS of the server process plus its workers sampled with each poll.", "",
             "| face workers | frames | frames/s | vs. 1 worker | p50 | p95 | /healthz p99 | idle RSS | peak RSS |",
             "|---|---|---|---|---|---|---|---|---|"]
    for count, r in sorted(results.items()):
        lines.append(f"| {count} | {r['frames']} | {r['fps']:.1f} | {r['fps'] / base['fps']:.2f}× | "
                     f"{r['p50'] * 1000:.0f} ms | {r['p95'] * 1000:.0f} ms | {r['healthz_p99'] * 1000:.1f} ms | "
                     f"{r['idle_rss'] / 2**20:.0f} MiB | {r['peak_rss'] / 2**20:.0f} MiB |")
    worst = max(r["healthz_p99"] for r in results.values())
    lines += ["", f"- /healthz p99 under face load: {worst * 1000:.1f} ms (target < 50 ms: "
                  f"{'met' if worst < 0.05 else 'MISSED'})"]
    return "\n".join(lines)
