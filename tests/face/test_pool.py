"""FacePool: real spawned workers with dlib loaded; the event loop stays free; a dead worker is survived."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import cv2
import pytest
import pytest_asyncio

from server.face.image import ImageRejected
from server.face.pool import FacePool, FacePoolBroken
from tests.face.conftest import jpeg, photo, pixels, png_claiming

pytestmark = pytest.mark.asyncio(loop_scope="module")
WORKERS = 2


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool():
    """One pool for the module: spawning workers that load dlib takes seconds."""
    face_pool = FacePool(WORKERS)
    await face_pool.start()
    yield face_pool
    await face_pool.close()


def _workers(face_pool: FacePool):
    return list(face_pool._executor._processes.values())


async def test_start_returns_with_every_worker_running_and_ready(pool):
    assert pool.ready
    workers = _workers(pool)
    assert len(workers) == WORKERS and all(worker.is_alive() for worker in workers)


async def test_analysis_runs_in_the_workers(pool):
    results = await asyncio.gather(pool.analyse(photo("obama/obama1.jpg")),
                                   pool.analyse(photo("multi/two_people.jpg")))
    assert results[0].outcome == "ok" and len(results[0].encoding) == 128
    assert results[1].outcome == "multiple_faces" and results[1].encoding is None


async def test_a_rejected_image_is_raised_in_the_caller_with_its_reason(pool):
    with pytest.raises(ImageRejected) as caught:
        await pool.analyse(png_claiming(30_000, 30_000))
    assert caught.value.reason == "too_many_pixels" and "the limit is 25" in caught.value.message
    with pytest.raises(ImageRejected, match="0 bytes"):
        await pool.analyse(b"")


async def test_the_event_loop_keeps_ticking_while_every_worker_is_busy(pool):
    small = pixels("obama/obama1.jpg")
    frame = jpeg(cv2.resize(small, (small.shape[1] * 4, small.shape[0] * 4), interpolation=cv2.INTER_CUBIC))
    started = time.perf_counter()
    await pool.analyse(frame)
    one_analysis = time.perf_counter() - started

    gaps, busy = [], True

    async def ticker():
        last = time.perf_counter()
        while busy:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    started = time.perf_counter()
    results = await asyncio.gather(*(pool.analyse(frame) for _ in range(WORKERS * 3)))
    all_busy = time.perf_counter() - started
    busy = False
    await ticking

    assert all(result.outcome == "ok" for result in results)
    assert all_busy > 2 * one_analysis  # the workers really were kept busy the whole time
    assert len(gaps) > 10
    assert max(gaps) < one_analysis / 2, f"loop stalled {max(gaps):.3f}s; one analysis takes {one_analysis:.3f}s"


async def test_a_killed_worker_fails_at_most_one_request_and_the_pool_recovers(pool):
    victim = _workers(pool)[0]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(timeout=10)

    try:
        first = await pool.analyse(photo("obama/obama2.jpg"))
        assert first.outcome == "ok"
    except FacePoolBroken as exc:
        assert "send the frame again" in str(exc)
    second = await pool.analyse(photo("obama/obama2.jpg"))
    assert second.outcome == "ok"
    for _ in range(100):
        if pool.ready:
            break
        await asyncio.sleep(0.1)
    assert pool.ready and len(_workers(pool)) == WORKERS


async def test_a_closed_pool_is_not_ready_and_says_why():
    face_pool = FacePool(1)
    with pytest.raises(RuntimeError, match="not started"):
        await face_pool.analyse(photo("obama/obama1.jpg"))
    assert not face_pool.ready
