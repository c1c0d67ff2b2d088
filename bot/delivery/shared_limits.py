"""Telegram's send limits shared by several dispatchers through Redis.

A `SendPacer` over its in-memory store keeps one process within 30 msg/s and 1 msg/s per chat; N dispatchers on
one PostgreSQL would together send N times that. `SharedSendPacer` is the same pacer over `RedisPaceStore`, so
the limits hold for all dispatchers together, and a 429 from Telegram pauses every one of them.

Each store operation is one Lua script, so it is atomic across processes. Times come from Redis's own clock
(``TIME`` inside the scripts), so the processes' clocks need not agree. A dispatcher killed mid-send leaves its
window place held for ``hold`` seconds at most.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.delivery.limits import HOLD_S, PaceStoreDown, SendPacer

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: times not to start before. ARGV: max wait, ttl ms, then each key's gap (0: only read).
_RESERVE = _NOW + """
local start = now
for i = 1, #KEYS do
  local at = tonumber(redis.call('GET', KEYS[i]) or '0')
  if at > start then start = at end
end
if start - now > tonumber(ARGV[1]) then return {0, string.format('%.6f', start - now)} end
for i = 1, #KEYS do
  local gap = tonumber(ARGV[i + 2])
  if gap > 0 then redis.call('SET', KEYS[i], string.format('%.6f', start + gap), 'PX', ARGV[2]) end
end
return {1, string.format('%.6f', start - now)}
"""

# KEYS: a time. ARGV: seconds (0 only reads). Answers how many seconds are still left until it.
_EXTEND = _NOW + """
local at = tonumber(redis.call('GET', KEYS[1]) or '0')
local wanted = now + tonumber(ARGV[1])
if tonumber(ARGV[1]) > 0 and wanted > at then
  at = wanted
  redis.call('SET', KEYS[1], string.format('%.6f', at), 'PX', math.ceil(tonumber(ARGV[1]) * 1000) + 1000)
end
return string.format('%.6f', math.max(at - now, 0))
"""

# KEYS: a window (sorted set: member -> until when its place is held). ARGV: cap, member, hold s.
# Takes a place (answers -1) or answers how long until the earliest place frees.
_TAKE = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.6f', now))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], string.format('%.6f', now + tonumber(ARGV[3])), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) * 1000) + 1000)
  return '-1'
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return string.format('%.6f', tonumber(first[2]) - now)
"""

# KEYS: a window. ARGV: member, seconds. The member's place frees that many seconds from now.
_FREE = _NOW + """
redis.call('ZADD', KEYS[1], 'XX', string.format('%.6f', now + tonumber(ARGV[2])), ARGV[1])
"""


class RedisPaceStore:
    """The pacer's state under ``namespace`` in one Redis, shared by every process that names it."""

    def __init__(self, redis: Redis, namespace: str = "rastau:pace"):
        self._redis = redis
        self._ns = namespace
        self._reserve = redis.register_script(_RESERVE)
        self._extend = redis.register_script(_EXTEND)
        self._take = redis.register_script(_TAKE)
        self._free = redis.register_script(_FREE)

    def _key(self, name: str) -> str:
        return f"{self._ns}:{name}"

    async def close(self) -> None:
        await self._redis.aclose()

    async def reserve(self, keys: Sequence[str], gaps: Sequence[float], max_wait: float) -> tuple[bool, float]:
        ttl_ms = math.ceil(max(gaps) * 1000) + 60_000
        try:
            booked, wait = await self._reserve(keys=[self._key(k) for k in keys], args=[max_wait, ttl_ms, *gaps])
        except RedisError as exc:
            raise PaceStoreDown(type(exc).__name__) from exc
        return bool(int(booked)), float(wait)

    async def extend(self, key: str, seconds: float) -> float:
        try:
            return float(await self._extend(keys=[self._key(key)], args=[seconds]))
        except RedisError as exc:
            raise PaceStoreDown(type(exc).__name__) from exc

    async def take(self, window: str, cap: int, member: str, hold: float) -> float | None:
        try:
            wait = float(await self._take(keys=[self._key(window)], args=[cap, member, hold]))
        except RedisError as exc:
            raise PaceStoreDown(type(exc).__name__) from exc
        return None if wait < 0 else wait

    async def free(self, window: str, member: str, after: float) -> None:
        try:
            await self._free(keys=[self._key(window)], args=[member, after])
        except RedisError as exc:
            raise PaceStoreDown(type(exc).__name__) from exc


class SharedSendPacer(SendPacer):
    """`SendPacer`'s rules for all dispatchers that share ``namespace`` in one Redis."""

    def __init__(self, redis: Redis, global_rate: float, chat_rate: float, *, namespace: str = "rastau:pace",
                 hold: float = HOLD_S):
        self._redis_store = RedisPaceStore(redis, namespace)
        super().__init__(global_rate, chat_rate, store=self._redis_store, hold=hold)

    @classmethod
    def from_url(cls, url: str, global_rate: float, chat_rate: float, **kwargs: Any) -> SharedSendPacer:
        return cls(Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5), global_rate, chat_rate, **kwargs)

    async def close(self) -> None:
        await self._redis_store.close()
