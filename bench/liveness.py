"""Liveness capture vs. the single-frame check, in the same face worker, in the same run.

A capture session's frames arrive a quarter second apart and each is read as it arrives (its pose; its
encoding only when the tracker asks), so the decision waits only for the last frame's own reading. Measured:
the time from the last frame's arrival to the decision, against one single-frame check (``analyse``) of a
640×480 frame; and the worker CPU a whole capture costs, against one single-frame check's.

The clips are genuine clips from devkit/liveness_clips.py, decided at the stills' thresholds (the fixture
photos turn too little for the thresholds in force, docs/liveness.md): speed, not the decision, is measured.
"""
from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

from bench.results import median, percentile
from core.liveness import STILLS, Challenge, LivenessTracker, challenges
from devkit.liveness_clips import Shot, camera_frame, genuine_clip
from server.face.pool import FacePool

TARGET_RATIO = 2.0


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


def report(r: dict) -> str:
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
    ])
