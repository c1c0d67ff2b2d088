"""Liveness capture vs. the single-frame check, in the same face worker, in the same run.

A capture session's frames arrive a quarter second apart and each is read as it arrives (its pose; its
encoding only when the tracker asks), so the decision waits only for the last frame's own reading. Measured:
the time from the last frame's arrival to the decision, against one single-frame check (``analyse``) of a
640×480 frame; and the worker CPU a whole capture costs, against one single-frame check's.

The clips are genuine clips from devkit/liveness_clips.py, decided at the stills' thresholds (the fixture
photos turn too little for the thresholds in force, docs/liveness.md): speed, not the decision, is measured.

``run_server`` measures the event loop's responsiveness while captures run: a real ``python -m server`` with its
face workers, K capture sessions at once through the real WebSocket, each doing what the page does (answer every
step with a genuine camera frame of the asked pose, never sooner than 200 ms after its previous frame: ≤ 5 frames
a second), while a client polls ``/healthz``; against ``/healthz`` with no capture running, before and after, on
the same server.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from bench.code_http import load_average
from bench.results import median, percentile
from bench.world import free_port, fresh_context, server_env, wait_healthy
from core.liveness import STILLS, Challenge, LivenessTracker, Pose, challenges
from core.services import registry, visits
from core.services.api_keys import create_api_key
from devkit.liveness_clips import PHOTOS, Shot, camera_frame, genuine_clip, shots
from server.face.pool import FacePool

TARGET_RATIO = 2.0
HEALTHZ_TARGET_S = 0.05
PAGE_INTERVAL_S = 0.2  # server/static/capture.js: MIN_INTERVAL_MS, a frame no sooner than this after the last
POLL_S = 0.02  # /healthz polled every 20 ms, as bench/face_load.py does


def _cpu_seconds(pool: FacePool) -> float:
    """User + system CPU of the pool's worker processes so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for process in pool._executor._processes.values():  # type: ignore[union-attr]  # bench reads the workers
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


async def _single(pool: FacePool, frame: bytes) -> tuple[float, float]:
    cpu, started = _cpu_seconds(pool), time.perf_counter()
    analysis = await pool.analyse(frame)
    assert analysis.outcome == "ok"
    return time.perf_counter() - started, _cpu_seconds(pool) - cpu


async def _capture(pool: FacePool, poses: tuple, person: str, rng: random.Random) -> dict:
    """Frames sent at their timestamps, each read when it arrives; the decision's delay after the last one."""
    clip = genuine_clip(poses, person, rng)
    tracker = LivenessTracker(Challenge(poses), 0.0, STILLS)
    progress = tracker.progress
    cpu, started = _cpu_seconds(pool), time.perf_counter()
    frames = encoded = 0
    arrived = started
    for at, data in clip:
        arrived = max(started + at, time.perf_counter())
        await asyncio.sleep(max(0.0, arrived - time.perf_counter()))
        encoded += progress.encode_next
        reading = await pool.read_pose(data, encode=progress.encode_next)
        progress = tracker.feed(at, reading)
        frames += 1
        if progress.done:
            break
    decided = time.perf_counter()
    assert progress.outcome == "live", progress
    return {"delay": decided - arrived, "cpu": _cpu_seconds(pool) - cpu, "frames": frames, "encoded": encoded,
            "seconds": decided - started}


async def _run(rounds: int) -> dict:
    pool = FacePool(1)
    await pool.start()
    try:
        rng = random.Random(7)
        frontal = camera_frame(Shot("obama/obama1.jpg"), rng)
        await _single(pool, frontal)   # warm
        singles, captures = [], []
        every = challenges()
        for index in range(rounds):
            person = ("obama", "kit_harington", "alex_lacamoire")[index % 3]
            captures.append(await _capture(pool, every[index % len(every)], person, rng))
            singles += [await _single(pool, frontal) for _ in range(3)]
        return {"rounds": rounds,
                "single_p50": median([s[0] for s in singles]), "single_p95": percentile([s[0] for s in singles], 95),
                "single_cpu": median([s[1] for s in singles]),
                "delay_p50": median([c["delay"] for c in captures]),
                "delay_p95": percentile([c["delay"] for c in captures], 95),
                "capture_cpu": median([c["cpu"] for c in captures]),
                "frames": median([c["frames"] for c in captures]), "encoded": median([c["encoded"] for c in captures]),
                "seconds": median([c["seconds"] for c in captures])}
    finally:
        await pool.close()


def run(*, rounds: int) -> dict:
    return asyncio.run(_run(rounds))


def report(r: dict, server: dict) -> str:
    ratio = r["delay_p50"] / r["single_p50"]
    return "\n".join([
        f"One face worker; {r['rounds']} genuine captures (7 steps, frames 0.25 s apart, each read as it arrives), "
        "interleaved with single-frame checks of a 640×480 frontal frame (`analyse`), 3 after each capture.",
        "", "| | p50 | p95 |", "|---|---|---|",
        f"| single-frame check: frame sent → decision | {r['single_p50'] * 1000:.0f} ms | "
        f"{r['single_p95'] * 1000:.0f} ms |",
        f"| capture: last frame sent → decision | {r['delay_p50'] * 1000:.0f} ms | {r['delay_p95'] * 1000:.0f} ms |",
        "",
        f"- decision after the last frame / single-frame check at p50: **{ratio:.2f}×** "
        f"(target ≤ {TARGET_RATIO:g}×: {'met' if ratio <= TARGET_RATIO else 'MISSED'})",
        f"- worker CPU: a whole capture {r['capture_cpu'] * 1000:.0f} ms ({r['frames']:.0f} frames read, "
        f"{r['encoded']:.0f} of them encoded, {r['seconds']:.1f} s from first frame to decision) vs. one single-frame "
        f"check {r['single_cpu'] * 1000:.0f} ms: **{r['capture_cpu'] / max(r['single_cpu'], 1e-3):.1f}×** "
        "(CPU from /proc at clock-tick resolution, 10 ms)",
        "", *_server_report(server)])


def _server_report(server: dict) -> list[str]:
    idle_p99 = percentile(server["idle"], 99)
    worst = max(percentile(load["healthz"], 99) for load in server["loads"])
    workers, waves = server["workers"], server["waves"]
    lines = [f"/healthz while captures run: the real `python -m server` on SQLite with {workers} face "
             f"worker{'s' * (workers != 1)} (dev mode for the stills thresholds), {os.cpu_count()} cores shared by "
             "the server, its workers and the client. K capture sessions at once through the real WebSocket, each "
             "answering every step with a genuine 640×480 camera frame of the asked pose no sooner than 200 ms after "
             f"its last (the page's pace, ≤ 5 frames/s), {waves} wave{'s' * (waves != 1)} of K; `/healthz` polled "
             "every 20 ms throughout, and with no capture running on the same server before and after (the "
             f"baseline). Load average (1, 5, 15 min) before {server['load_average'][0]}, after "
             f"{server['load_average'][1]}.", "",
             "| K: captures at once | sessions (outcomes) | frames | frames/s | a session, p50 |",
             "|---|---|---|---|---|"]
    for load in server["loads"]:
        outcomes = ", ".join(f"{n} {o}" for o, n in sorted(load["outcomes"].items()))
        lines.append(f"| {load['at_once']} | {load['sessions']} ({outcomes}) | {load['frames']} | {load['fps']:.1f} | "
                     f"{load['session_s']:.1f} s |")
    lines += ["", "| /healthz | samples | p50 | p99 | p99 vs. no captures |", "|---|---|---|---|---|",
              _healthz_row("no captures", server["idle"], idle_p99),
              *(_healthz_row(f"K = {load['at_once']} captures at once", load["healthz"], idle_p99)
                for load in server["loads"]),
              "", f"- /healthz p99 while captures run: {worst * 1000:.1f} ms at worst (target < "
                  f"{HEALTHZ_TARGET_S * 1000:.0f} ms: {'met' if worst < HEALTHZ_TARGET_S else 'MISSED'})"]
    return lines


async def _seed_captures(database_url: str, count: int) -> tuple[dict, str, list[int]]:
    """A clinic whose patient has Obama's face enrolled, ``count`` in-person visits under way, a webcam key."""
    from server.face.pipeline import analyse_frame
    keys, engine, ctx = await fresh_context(database_url)
    clinic = await registry.create_clinic(ctx, "Bench clinic")
    doctor = await registry.add_doctor(ctx, clinic.id, "Doctor", "+77011000000")
    patient = (await registry.upsert_patient(ctx, clinic.id, "900101300017", "Bench Patient", "+77020000000")).patient
    await registry.record_consent(ctx, clinic.id, patient.id, "bench")
    await registry.enrol_face(ctx, clinic.id, patient.id, [analyse_frame((PHOTOS / "obama/obama1.jpg").read_bytes())
                                                           .encoding])
    api_key = (await create_api_key(ctx, clinic.id, ["webcam"], label="bench")).key
    start = ctx.clock.now() - dt.timedelta(minutes=5)
    visit_ids = [(await visits.register_visit(ctx, clinic_id=clinic.id, doctor_id=doctor.id, patient_id=patient.id,
                                              start=start, duration=dt.timedelta(hours=8), mode="in_person",
                                              service_code="A01")).id for _ in range(count)]
    await engine.dispose()
    return keys, api_key, visit_ids


def _frames(rng: random.Random, per_pose: int) -> dict[Pose, list[bytes]]:
    """Genuine camera frames of each pose, made before the clock starts (the client's CPU is the server's too)."""
    return {pose: [camera_frame(rng.choice(shots("obama", pose)), rng) for _ in range(per_pose)] for pose in Pose}


async def _capture_session(http: aiohttp.ClientSession, base: str, visit_id: int, frames: dict[Pose, list[bytes]],
                           offset: int) -> dict:
    """What the capture page does, through the real socket: every step answered with a frame of the asked pose
    (never the same frame twice in a session), at most one per PAGE_INTERVAL_S, until the server decides."""
    async with http.post(f"{base}/api/v1/visits/{visit_id}/capture-sessions") as response:
        opened = await response.json()
        if response.status != 201:
            raise AssertionError(f"capture session refused: {response.status} {opened}")
    path = "/" + opened["url"].split("/", 3)[3]
    sent, used, last = 0, {pose: offset for pose in Pose}, 0.0
    started = time.perf_counter()
    async with http.ws_connect(base + path + "/ws") as socket:
        while (message := await socket.receive_json(timeout=60))["type"] == "step":
            pose = Pose(message["pose"])
            await asyncio.sleep(max(0.0, last + PAGE_INTERVAL_S - time.perf_counter()))
            pool = frames[pose]
            await socket.send_bytes(pool[used[pose] % len(pool)])
            used[pose] += 1
            last, sent = time.perf_counter(), sent + 1
    return {"outcome": message.get("outcome"), "frames": sent, "seconds": time.perf_counter() - started}


async def _probe(base: str, until: asyncio.Event, samples: list[float]) -> None:
    async with aiohttp.ClientSession() as http:
        while not until.is_set():
            t0 = time.perf_counter()
            async with http.get(base + "/healthz") as response:
                await response.read()
            samples.append(time.perf_counter() - t0)
            await asyncio.sleep(POLL_S)


async def _idle(base: str, seconds: float) -> list[float]:
    samples: list[float] = []
    stop = asyncio.Event()
    prober = asyncio.create_task(_probe(base, stop, samples))
    await asyncio.sleep(seconds)
    stop.set()
    await prober
    return samples


async def _captures(base: str, api_key: str, visit_ids: list[int], at_once: int,
                    frames: dict[Pose, list[bytes]]) -> dict:
    """Waves of ``at_once`` concurrent sessions, one visit each, /healthz polled throughout."""
    samples: list[float] = []
    stop = asyncio.Event()
    prober = asyncio.create_task(_probe(base, stop, samples))
    sessions: list[dict] = []
    started = time.perf_counter()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {api_key}"}) as http:
        for wave in range(0, len(visit_ids), at_once):
            sessions += await asyncio.gather(*(
                _capture_session(http, base, visit_id, frames, offset=3 * n)
                for n, visit_id in enumerate(visit_ids[wave:wave + at_once])))
    elapsed = time.perf_counter() - started
    stop.set()
    await prober
    outcomes: dict[str, int] = {}
    for session in sessions:
        outcomes[session["outcome"]] = outcomes.get(session["outcome"], 0) + 1
    frames_sent = sum(s["frames"] for s in sessions)
    return {"at_once": at_once, "sessions": len(sessions), "frames": frames_sent, "fps": frames_sent / elapsed,
            "session_s": median([s["seconds"] for s in sessions]), "outcomes": outcomes, "healthz": samples}


async def run_server(workdir: str, *, at_once: list[int], waves: int, workers: int = 2,
                     idle_seconds: float = 10.0) -> dict:
    """The real server (dev mode: the stills thresholds, as above), idle /healthz for ``idle_seconds`` before and
    after the captures."""
    url = f"sqlite+aiosqlite:///{os.path.join(workdir, f'captures-{time.time_ns()}.db')}"
    load_before = load_average()
    keys, api_key, visit_ids = await _seed_captures(url, sum(at_once) * waves)
    port = free_port()
    env = server_env(url, keys, RASTAU_SERVER_PORT=str(port), RASTAU_FACE_WORKERS=str(workers))
    # production refuses the stills thresholds; capture sessions are the only face evidence, as in production
    env.update(RASTAU_MODE="dev", RASTAU_LIVENESS_STILLS="1", RASTAU_SINGLE_FRAME_FACE="0")
    process = subprocess.Popen([sys.executable, "-m", "server"], env=env, stdout=subprocess.DEVNULL)
    try:
        frames = _frames(random.Random(11), per_pose=3 * max(at_once) + 12)  # while the server loads its models
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, base, process)
            for _ in range(600):  # face workers warm: /readyz says so
                async with http.get(base + "/readyz") as response:
                    if response.status == 200:
                        break
                await asyncio.sleep(0.1)
        idle = await _idle(base, idle_seconds)
        loads = []
        for count in at_once:
            loads.append(await _captures(base, api_key, visit_ids[:count * waves], count, frames))
            visit_ids = visit_ids[count * waves:]
        idle += await _idle(base, idle_seconds)
    finally:
        process.terminate()
        process.wait(timeout=60)
    for load in loads:
        if set(load["outcomes"]) != {"match"}:
            raise AssertionError(f"unexpected capture outcomes: {load['outcomes']}")
    return {"workers": workers, "waves": waves, "idle": idle, "loads": loads,
            "load_average": (load_before, load_average())}


def _healthz_row(label: str, samples: list[float], idle_p99: float) -> str:
    p99 = percentile(samples, 99)
    return (f"| {label} | {len(samples)} | {median(samples) * 1000:.1f} ms | {p99 * 1000:.1f} ms | "
            f"{p99 / idle_p99:.1f}× |")
