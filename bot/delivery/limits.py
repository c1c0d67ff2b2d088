"""Telegram's send limits: a global pace (30 msg/s) and a per-chat pace (1 msg/s), plus pauses on 429.

One algorithm, `SendPacer`, over a `PaceStore` that holds its state: `MemoryPaceStore` keeps one process within
the limits; `RedisPaceStore` (``bot.delivery.shared_limits``) keeps several dispatchers within them together.
"""
from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from core.logs import get_logger

log = get_logger("rastau.dispatcher")

STORE_RETRY_S = 5.0  # a turn refused for want of the store is handed back for this much later
POLL_S = 0.02  # how often a full window is looked at again
HOLD_S = 120.0  # a send that never gives its place back (its process died) holds it this long at most

# The store's keys, as the pacer names them (a shared store adds its namespace).
NEXT_START = "next"  # the earliest start the global pace allows
PAUSED = "paused"  # until when Telegram asked everyone to wait (429)
WINDOW = "window"  # sends in flight or answered less than a span ago, all chats


def _chat_next_start(chat_id: int) -> str:
    return f"chat:{chat_id}:next"


def _chat_window(chat_id: int) -> str:
    return f"chat:{chat_id}:window"


class PaceClock(Protocol):
    """The time sends are paced on: a monotonic clock and a sleep on that same clock. `REAL_TIME` in production;
    a test may hand the pacer (and the stand-in that counts Telegram's limits) one that runs faster."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class RealTime:
    """Real seconds: ``time.monotonic`` and ``asyncio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


REAL_TIME = RealTime()


class Pacer(Protocol):
    """What the dispatcher needs of a pacer."""

    def now(self) -> float:
        """The clock ``not_after`` and `TooLate.at` are on."""

    def turn(self, chat_id: int, not_after: float = math.inf) -> AbstractAsyncContextManager[None]: ...

    async def pause(self, seconds: float) -> None: ...


class TooLate(Exception):
    """The send's turn would come after the caller's deadline; ``at`` is when it would come (on the pacer's clock)."""

    def __init__(self, at: float):
        super().__init__(f"turn at {at:.3f}")
        self.at = at


class PaceStoreDown(Exception):
    """The store could not be asked (Redis away): no send may start unpaced."""


class PaceStore(Protocol):
    """The pacer's state, changed only by these atomic operations. Times are the store's own, in seconds."""

    async def reserve(self, keys: Sequence[str], gaps: Sequence[float], max_wait: float) -> tuple[bool, float]:
        """The earliest start no key forbids (each holds a time not to start before). Unless it is more than
        ``max_wait`` away, book it: each key with a gap > 0 moves to that start plus its gap. Answers (booked,
        seconds until that start)."""

    async def extend(self, key: str, seconds: float) -> float:
        """Move ``key`` to ``seconds`` from now unless it is later already (0 only reads); seconds still left."""

    async def take(self, window: str, cap: int, member: str, hold: float) -> float | None:
        """A place in a window of ``cap``, held ``hold`` seconds unless freed earlier: None when taken,
        otherwise seconds until the earliest place frees."""

    async def free(self, window: str, member: str, after: float) -> None:
        """``member``'s place frees ``after`` seconds from now."""


@dataclass(frozen=True)
class Pace:
    """One of Telegram's limits as the pacer keeps it: starts ``gap`` apart, and at most ``cap`` sends in flight
    or answered less than ``span`` seconds ago.

    A request reaches Telegram somewhere between its start and its answer, so a send that starts only when fewer
    than ``cap`` others could still be within ``span`` of it keeps every window of Telegram's at or under the cap,
    however late any single request arrives.
    """
    gap: float
    cap: int
    span: float

    @classmethod
    def per_second(cls, rate: float) -> Pace:
        return cls(gap=1.0 / rate, cap=max(1, math.floor(rate)), span=max(1.0, 1.0 / rate))


class SendPacer:
    """Keeps sends within ``global_rate`` per second overall and ``chat_rate`` per chat, as Telegram counts:
    by arrival, in any sliding second.

    Starts are spaced evenly (no bursts), and each send also holds a place in a sliding window until a
    second after its answer. Even spacing alone is not enough: one request delayed in transit and the next
    one on time land in the same second at Telegram. A 429's ``retry_after`` pauses all sending, since
    Telegram doesn't say which limit was hit. When the store cannot be asked no send starts: the turn raises
    `TooLate`, and the dispatcher hands the message back for later.
    """

    def __init__(self, global_rate: float, chat_rate: float, clock: PaceClock = REAL_TIME, *,
                 store: PaceStore | None = None, hold: float = HOLD_S):
        """``clock`` tells the deadlines (``not_after``), paces the waits and, by default, the in-memory store's
        time; a store that keeps its own time (Redis) needs real time."""
        self._global, self._chat = Pace.per_second(global_rate), Pace.per_second(chat_rate)
        self._clock = clock.now
        self._sleep = clock.sleep
        self._store = store or MemoryPaceStore(clock.now)
        self._hold = hold

    def now(self) -> float:
        return self._clock()

    async def pause(self, seconds: float) -> None:
        """Telegram answered 429: wait ``seconds`` before the next send (every dispatcher, when shared)."""
        try:
            await self._store.extend(PAUSED, seconds)
        except PaceStoreDown as exc:
            log.warning("could not share a 429 pause", error=str(exc))

    @asynccontextmanager
    async def turn(self, chat_id: int, not_after: float = math.inf) -> AsyncIterator[None]:
        """Wait until this chat may be sent to; send inside the block. Raises TooLate rather than start a
        send after ``not_after`` (on ``clock``), or when the store cannot be asked."""
        member, chat_window = uuid.uuid4().hex, _chat_window(chat_id)
        taken: list[tuple[str, float]] = []
        try:
            await self._wait_for_start(chat_id, not_after)
            await self._take(chat_window, self._chat, member)  # the chat first: never hold a global place
            taken.append((chat_window, self._chat.span))
            await self._take(WINDOW, self._global, member)
            taken.append((WINDOW, self._global.span))
            while (paused := await self._store.extend(PAUSED, 0)) > 0:
                await self._sleep(paused)  # a 429 that arrived while we waited moves us behind the pause
        except PaceStoreDown as exc:
            await self._give_back(taken, member)
            log.warning("send pacer unavailable: handing the message back", error=str(exc))
            raise TooLate(self._clock() + STORE_RETRY_S) from exc
        except BaseException:  # too late, or cancelled while waiting
            await self._give_back(taken, member)
            raise
        if self._clock() > not_after:
            await self._give_back(taken, member)
            raise TooLate(self._clock())
        try:
            yield
        finally:
            await self._give_back(taken, member)

    async def _wait_for_start(self, chat_id: int, not_after: float) -> None:
        booked, wait = await self._store.reserve([NEXT_START, _chat_next_start(chat_id), PAUSED],
                                                 [self._global.gap, self._chat.gap, 0.0],
                                                 max_wait=min(not_after - self._clock(), 1e9))
        if not booked:
            raise TooLate(self._clock() + wait)
        if wait > 0:
            await self._sleep(wait)

    async def _take(self, window: str, pace: Pace, member: str) -> None:
        # The state may be in another process's hands (Redis): there is no event to wait on, only the time.
        while (wait := await self._store.take(window, pace.cap, member, self._hold)) is not None:
            await self._sleep(min(max(wait, 0.001), POLL_S))

    async def _give_back(self, taken: list[tuple[str, float]], member: str) -> None:
        """Answered (or given up): each place frees one span from now, as Telegram counts by arrival."""
        for window, span in taken:
            try:
                await self._store.free(window, member, span)
            except PaceStoreDown:
                pass  # the place frees by itself when its hold runs out


class MemoryPaceStore:
    """The pacer's state in this process; atomic because no operation awaits."""

    FORGET_AFTER = 10_000  # keys and windows kept before those that no longer matter are dropped

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._times: dict[str, float] = {}
        self._windows: dict[str, dict[str, float]] = {}  # window -> member -> until when its place is held

    async def reserve(self, keys: Sequence[str], gaps: Sequence[float], max_wait: float) -> tuple[bool, float]:
        now = self._clock()
        start = max(now, *(self._times.get(key, 0.0) for key in keys))
        if start - now > max_wait:
            return False, start - now
        for key, gap in zip(keys, gaps):
            if gap > 0:
                self._times[key] = start + gap
        if len(self._times) > self.FORGET_AFTER:
            self._times = {k: at for k, at in self._times.items() if at > now}
        return True, start - now

    async def extend(self, key: str, seconds: float) -> float:
        now = self._clock()
        until = self._times.get(key, 0.0)
        if seconds > 0 and now + seconds > until:
            self._times[key] = now + seconds
            return seconds  # exactly: (now + seconds) - now can round an ulp above it
        return max(until - now, 0.0)

    async def take(self, window: str, cap: int, member: str, hold: float) -> float | None:
        now = self._clock()
        places = {m: until for m, until in self._windows.get(window, {}).items() if until > now}
        self._windows[window] = places
        if len(places) < cap:
            places[member] = now + hold
            if len(self._windows) > self.FORGET_AFTER:
                self._windows = {w: p for w, p in self._windows.items() if max(p.values(), default=0.0) > now}
            return None
        return min(places.values()) - now

    async def free(self, window: str, member: str, after: float) -> None:
        places = self._windows.get(window, {})
        if member in places:
            places[member] = self._clock() + after
