"""Waiting in real time for something another task or process does, with a deadline and no fixed sleep."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(condition: Callable[[], bool], within: float, failing: str = "not within the time allowed") -> None:
    """Return once ``condition()`` holds, checked every few milliseconds; fail with ``failing`` after ``within`` s."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, failing
        await asyncio.sleep(0.005)
