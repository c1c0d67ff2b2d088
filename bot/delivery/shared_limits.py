"""Telegram's send limits shared by several dispatchers through Redis.

`SendPacer` keeps one process within 30 msg/s and 1 msg/s per chat; N dispatchers on one PostgreSQL would
together send N times that. `SharedSendPacer` applies the same two rules — evenly spaced starts, and a sliding
window holding each send's place until a second after its answer — with the state in Redis, so the limits hold
for all dispatchers together, and a 429 from Telegram pauses every one of them.

Times come from Redis's own clock (`TIME` inside the scripts), so the processes' clocks need not agree. A
dispatcher killed mid-send leaves its window place held for ``hold`` seconds at most. When Redis cannot be
reached no send starts: the turn raises `TooLate`, and the dispatcher hands the message back for later.
"""
from __future__ import annotations

import asyncio
import math
import time
import uuid
from contextlib import asynccontextmanager
from typing import AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.delivery.limits import TooLate
from core.logs import get_logger

log = get_logger("rastau.dispatcher")

REDIS_RETRY_S = 5.0  # a turn refused for want of Redis is handed back for this much later
POLL_S = 0.02  # how often a full window is looked at again

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: next global start, next start for the chat, paused until. ARGV: global gap, chat gap, max wait, ttl ms.
# Reserves the earliest start both paces allow, unless it is more than max wait away. Returns {reserved, wait}.
_RESERVE = _NOW + """
local slot = now
for i = 1, 3 do
  local at = tonumber(redis.call('GET', KEYS[i]) or '0')
  if at > slot then slot = at end
end
if slot - now > tonumber(ARGV[3]) then return {0, string.format('%.6f', slot - now)} end
redis.call('SET', KEYS[1], string.format('%.6f', slot + tonumber(ARGV[1])), 'PX', ARGV[4])
redis.call('SET', KEYS[2], string.format('%.6f', slot + tonumber(ARGV[2])), 'PX', ARGV[4])
return {1, string.format('%.6f', slot - now)}
"""

# KEYS: a window (sorted set: member -> until when its place is held). ARGV: cap, member, hold s.
# Takes a place (answers -1) or answers how long until the earliest place frees.
_ACQUIRE = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.6f', now))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], string.format('%.6f', now + tonumber(ARGV[3])), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) * 1000) + 1000)
  return '-1'
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return string.format('%.6f', tonumber(first[2]) - now)
"""

# KEYS: a window. ARGV: member, span s. The send was answered: its place frees ``span`` seconds from now.
_RELEASE = _NOW + """
redis.call('ZADD', KEYS[1], 'XX', string.format('%.6f', now + tonumber(ARGV[2])), ARGV[1])
"""

# KEYS: paused until. ARGV: seconds (0 only reads). Answers how many seconds the pause still lasts.
_PAUSE = _NOW + """
local paused_until = tonumber(redis.call('GET', KEYS[1]) or '0')
local wanted = now + tonumber(ARGV[1])
if tonumber(ARGV[1]) > 0 and wanted > paused_until then
  paused_until = wanted
  redis.call('SET', KEYS[1], string.format('%.6f', paused_until), 'PX', math.ceil(tonumber(ARGV[1]) * 1000) + 1000)
end
return string.format('%.6f', math.max(paused_until - now, 0))
"""


class SharedSendPacer:
    """`SendPacer`'s rules for all dispatchers that share ``namespace`` in one Redis."""

    def __init__(self, redis: Redis, global_rate: float, chat_rate: float, *, namespace: str = "rastau:pace",
                 hold: float = 120.0):
        self._redis = redis
        self._global_gap, self._chat_gap = 1.0 / global_rate, 1.0 / chat_rate
        self._global_cap, self._global_span = max(1, math.floor(global_rate)), max(1.0, 1.0 / global_rate)
        self._chat_cap, self._chat_span = max(1, math.floor(chat_rate)), max(1.0, 1.0 / chat_rate)
        self._hold = hold
        self._ns = namespace
        self._reserve = redis.register_script(_RESERVE)
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)
        self._pause = redis.register_script(_PAUSE)

    @classmethod
    def from_url(cls, url: str, global_rate: float, chat_rate: float, **kwargs) -> "SharedSendPacer":
        return cls(Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5), global_rate, chat_rate, **kwargs)

    async def close(self) -> None:
        await self._redis.aclose()

    async def pause(self, seconds: float) -> None:
        """Telegram answered 429: every dispatcher waits ``seconds`` before its next send."""
        try:
            await self._pause(keys=[f"{self._ns}:paused"], args=[seconds])
        except RedisError as exc:
            log.warning("could not share a 429 pause through Redis", error=type(exc).__name__)

    @asynccontextmanager
    async def turn(self, chat_id: int, not_after: float = math.inf) -> AsyncIterator[None]:
        """Wait until this chat may be sent to; send inside the block. Raises TooLate rather than start a send
        after ``not_after`` (monotonic), or when Redis cannot be asked."""
        member = uuid.uuid4().hex
        chat_window, global_window = f"{self._ns}:chat:{chat_id}:window", f"{self._ns}:window"
        taken: list[tuple[str, float]] = []
        try:
            await self._wait_for_start(chat_id, not_after)
            await self._take(chat_window, self._chat_cap, member)  # the chat first: never hold a global place
            taken.append((chat_window, self._chat_span))
            await self._take(global_window, self._global_cap, member)
            taken.append((global_window, self._global_span))
            while (paused := float(await self._pause(keys=[f"{self._ns}:paused"], args=[0]))) > 0:
                await asyncio.sleep(paused)  # a 429 that arrived while we waited moves us behind the pause
        except RedisError as exc:
            await self._give_back(taken, member)
            log.warning("send pacer unavailable: handing the message back", error=type(exc).__name__)
            raise TooLate(time.monotonic() + REDIS_RETRY_S) from exc
        if time.monotonic() > not_after:
            await self._give_back(taken, member)
            raise TooLate(time.monotonic())
        try:
            yield
        finally:
            await self._give_back(taken, member)

    async def _wait_for_start(self, chat_id: int, not_after: float) -> None:
        max_wait = min(not_after - time.monotonic(), 1e9)
        ttl_ms = math.ceil(max(self._global_gap, self._chat_gap) * 1000) + 60_000
        reserved, wait = await self._reserve(
            keys=[f"{self._ns}:next", f"{self._ns}:chat:{chat_id}:next", f"{self._ns}:paused"],
            args=[self._global_gap, self._chat_gap, max_wait, ttl_ms])
        if not int(reserved):
            raise TooLate(time.monotonic() + float(wait))
        if float(wait) > 0:
            await asyncio.sleep(float(wait))

    async def _take(self, window: str, cap: int, member: str) -> None:
        while (wait := float(await self._acquire(keys=[window], args=[cap, member, self._hold]))) >= 0:
            await asyncio.sleep(min(max(wait, 0.001), POLL_S))

    async def _give_back(self, taken: list[tuple[str, float]], member: str) -> None:
        """Answered (or given up): each place frees one span from now, as Telegram counts by arrival."""
        for window, span in taken:
            try:
                await self._release(keys=[window], args=[member, span])
            except RedisError:
                pass  # the place frees by itself when its hold runs out
