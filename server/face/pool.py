"""Face analysis in worker processes, so dlib never blocks the event loop.

Processes, not threads: face_recognition deadlocks in threads. ``spawn``, not ``fork``: a forked copy of
a process that runs an event loop and database connections is not safe. Each worker loads the dlib
models once, in its initializer.
"""
from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from multiprocessing.synchronize import Barrier
from typing import TypeVar

from core.liveness import PoseReading
from core.logs import get_logger
from server.face.image import MAX_BYTES, MAX_PIXELS
from server.face.liveness import read_pose
from server.face.pipeline import FaceAnalysis, analyse_frame

T = TypeVar("T")
WARM_UP_TIMEOUT_S = 300  # loading the models on a busy two-core machine can take a while

log = get_logger(__name__)
_all_warm: Barrier | None = None  # the start-up barrier, set in each worker by the initializer


class FacePoolBroken(RuntimeError):
    """A face worker died while this frame was in the pool; the pool has restarted itself, send it again."""


def _init_worker(barrier: Barrier) -> None:
    """Load the models and run them once, so the first real frame is as fast as the rest."""
    global _all_warm
    from server.face.pipeline import warm_up

    warm_up()
    _all_warm = barrier


def _wait_for_all_workers() -> None:
    """One per worker at start: nobody returns until every worker has finished its initializer."""
    assert _all_warm is not None, "the initializer ran first in this worker"
    _all_warm.wait(timeout=WARM_UP_TIMEOUT_S)


class FacePool:
    def __init__(self, workers: int, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS):
        if workers < 1:
            raise ValueError("a face pool needs at least one worker")
        self.workers = workers
        self._limits = dict(max_bytes=max_bytes, max_pixels=max_pixels)
        self._context = multiprocessing.get_context("spawn")
        self._executor: ProcessPoolExecutor | None = None
        self._warm = False
        self._warming: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Spawn the workers and return once every one of them has loaded the models."""
        self._executor = self._new_executor()
        await self._warm_up(self._executor)

    @property
    def ready(self) -> bool:
        return self._executor is not None and self._warm

    async def analyse(self, data: bytes) -> FaceAnalysis:
        """Analyse one frame in a worker. Raises ImageRejected for bad images, FacePoolBroken if a worker died."""
        return await self._run(partial(analyse_frame, data, **self._limits))

    async def read_pose(self, data: bytes, *, encode: bool) -> PoseReading:
        """One capture-session frame's pose (and encoding when asked), in a worker; raises as analyse() does."""
        return await self._run(partial(read_pose, data, encode=encode, **self._limits))

    async def _run(self, work: partial[T]) -> T:
        executor = self._executor
        if executor is None:
            raise RuntimeError("FacePool is not started (await pool.start() first) or already closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, work)
        except BrokenProcessPool:
            self._replace(executor)
            raise FacePoolBroken("a face worker stopped unexpectedly while analysing this frame; "
                                 "the face workers were restarted — send the frame again") from None

    async def close(self) -> None:
        executor, self._executor, self._warm = self._executor, None, False
        if self._warming is not None:
            self._warming.cancel()
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, partial(executor.shutdown, cancel_futures=True))

    def _new_executor(self) -> ProcessPoolExecutor:
        barrier = self._context.Barrier(self.workers)
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=self._context,
                                   initializer=_init_worker, initargs=(barrier,))

    async def _warm_up(self, executor: ProcessPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(executor, _wait_for_all_workers) for _ in range(self.workers)))
        if executor is self._executor:
            self._warm = True

    async def _rewarm(self, executor: ProcessPoolExecutor) -> None:
        try:
            await self._warm_up(executor)
        except Exception as exc:  # noqa: BLE001 - the next request meets the broken pool and replaces it again
            log.error("face workers failed to restart", error=type(exc).__name__)
        else:
            log.info("face workers restarted", workers=self.workers)

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """Swap in a fresh executor once, however many requests saw the same broken one."""
        if self._executor is not broken:
            return
        log.warning("a face worker died; restarting the face workers", workers=self.workers)
        self._executor, self._warm = self._new_executor(), False
        self._warming = asyncio.get_running_loop().create_task(self._rewarm(self._executor))
        broken.shutdown(wait=False, cancel_futures=True)
