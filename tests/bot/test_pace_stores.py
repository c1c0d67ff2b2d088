"""The pacer's two stores answer alike: one algorithm (`SendPacer`) runs over either, so their operations must
mean the same in memory and in Redis."""
from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis

from bot.delivery.limits import MemoryPaceStore, PaceStoreDown, SendPacer, TooLate
from bot.delivery.shared_limits import RedisPaceStore


@pytest.fixture(params=["memory", "redis"])
async def store(request, redis_url):
    if request.param == "memory":
        yield MemoryPaceStore()
        return
    namespace = f"rastau:test:{uuid.uuid4().hex}"
    redis = Redis.from_url(redis_url)
    yield RedisPaceStore(redis, namespace)
    keys = [key async for key in redis.scan_iter(match=f"{namespace}:*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


async def test_reserve_books_the_earliest_start_every_key_allows(store):
    assert await store.reserve(["a", "b"], [10.0, 0.0], max_wait=60) == (True, 0.0)
    booked, wait = await store.reserve(["a", "b"], [10.0, 0.0], max_wait=60)
    assert booked and 9.5 < wait <= 10.0, "the second start comes one gap after the first"
    booked, wait = await store.reserve(["a"], [10.0], max_wait=5)
    assert not booked and 19 < wait <= 20, "too far away: refused, saying when it would be"
    assert await store.reserve(["b"], [0.0], max_wait=0) == (True, 0.0), "a gap of 0 only reads"


async def test_extend_only_ever_moves_a_time_later(store):
    ulp = 1e-9  # a time read back as (start + 5) - now can round a hair above 5 when the clock has not moved
    assert await store.extend("p", 0) == 0.0
    assert 4.5 < await store.extend("p", 5) <= 5.0 + ulp
    assert 4.5 < await store.extend("p", 1) <= 5.0 + ulp
    booked, wait = await store.reserve(["x", "p"], [1.0, 0.0], max_wait=60)
    assert booked and 4.5 < wait <= 5.0 + ulp, "nothing starts before the pause ends"


async def test_a_window_holds_cap_places_until_they_are_freed(store):
    assert await store.take("w", 2, "m1", 60) is None
    assert await store.take("w", 2, "m2", 60) is None
    wait = await store.take("w", 2, "m3", 60)
    assert wait is not None and 59 < wait <= 60, "full: the earliest place frees when its hold runs out"
    await store.free("w", "m1", 3)
    wait = await store.take("w", 2, "m3", 60)
    assert wait is not None and 2.5 < wait <= 3, "a freed place comes back after the span it was given"
    await store.free("w", "m2", 0)
    assert await store.take("w", 2, "m3", 60) is None


class DownStore(MemoryPaceStore):
    async def reserve(self, *args, **kwargs):
        raise PaceStoreDown("gone")

    async def extend(self, *args, **kwargs):
        raise PaceStoreDown("gone")


async def test_without_its_store_the_pacer_starts_no_send():
    pacer = SendPacer(30, 1, store=DownStore())
    await pacer.pause(5)  # logged, not raised: the dispatcher keeps going
    with pytest.raises(TooLate):
        async with pacer.turn(1):
            pytest.fail("a send started without the pacer's store")
