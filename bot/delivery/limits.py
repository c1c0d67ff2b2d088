"""Telegram's send limits: a global pace (30 msg/s) and a per-chat pace (1 msg/s), plus pauses on 429."""
from __future__ import annotations

import asyncio
import math
import time
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import AsyncIterator, Protocol


class Pacer(Protocol):
    """What the dispatcher needs of a pacer: this process's `SendPacer`, or the Redis-shared one."""

    def turn(self, chat_id: int, not_after: float = math.inf) -> AbstractAsyncContextManager[None]: ...

    async def pause(self, seconds: float) -> None: ...


class _Window:
    """At most ``cap`` sends in flight or answered less than ``span`` seconds ago.

    A request reaches Telegram somewhere between its start and its answer, so a send that starts only when
    fewer than ``cap`` others could still be within ``span`` of it keeps every window of Telegram's at or under
    the cap, however late any single request arrives.
    """

    def __init__(self, rate: float):
        self.cap = max(1, math.floor(rate))
        self.span = max(1.0, 1.0 / rate)
        self._free = asyncio.Semaphore(self.cap)
        self.busy = 0

    async def acquire(self) -> None:
        await self._free.acquire()
        self.busy += 1

    def release_later(self) -> None:
        asyncio.get_running_loop().call_later(self.span, self._release)

    def _release(self) -> None:
        self.busy -= 1
        self._free.release()


class TooLate(Exception):
    """The send's turn would come after the caller's deadline; ``at`` is when it would come (monotonic)."""

    def __init__(self, at: float):
        super().__init__(f"turn at {at:.3f}")
        self.at = at


class SendPacer:
    """Keeps sends within ``global_rate`` per second overall and ``chat_rate`` per chat, as Telegram counts:
    by arrival, in any sliding second.

    Starts are spaced evenly (no bursts), and each send also holds a place in a sliding window until a
    second after its answer. Even spacing alone is not enough: one request delayed in transit and the next
    one on time land in the same second at Telegram. A 429's ``retry_after`` pauses all sending, since
    Telegram doesn't say which limit was hit.
    """

    def __init__(self, global_rate: float, chat_rate: float, clock=time.monotonic):
        self._global_gap = 1.0 / global_rate
        self._chat_gap = 1.0 / chat_rate
        self._chat_rate = chat_rate
        self._clock = clock
        self._next_global = 0.0
        self._next_chat: dict[int, float] = {}
        self._global_window = _Window(global_rate)
        self._chat_windows: dict[int, _Window] = {}
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    async def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    @asynccontextmanager
    async def turn(self, chat_id: int, not_after: float = math.inf) -> AsyncIterator[None]:
        """Wait until this chat may be sent to; send inside the block. Raises TooLate rather than start a
        send after ``not_after``."""
        async with self._lock:
            now = self._clock()
            slot = max(now, self._paused_until, self._next_global, self._next_chat.get(chat_id, 0.0))
            if slot > not_after:
                raise TooLate(slot)
            self._next_global = slot + self._global_gap
            self._next_chat[chat_id] = slot + self._chat_gap
            if len(self._next_chat) > 10_000:  # forget chats whose pace no longer matters
                self._next_chat = {c: t for c, t in self._next_chat.items() if t > now}
                self._chat_windows = {c: w for c, w in self._chat_windows.items() if w.busy}
            chat_window = self._chat_windows.setdefault(chat_id, _Window(self._chat_rate))
        delay = slot - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)
        await chat_window.acquire()  # the chat first: waiting for it never holds a global place
        try:
            await self._global_window.acquire()
            try:
                # a 429 that arrived while we waited moves us behind the pause
                while self._paused_until > self._clock():
                    await asyncio.sleep(self._paused_until - self._clock())
                if self._clock() > not_after:
                    raise TooLate(self._clock())
                yield
            finally:
                self._global_window.release_later()
        finally:
            chat_window.release_later()
