"""Several dispatchers share Telegram's limits through the real Redis (RASTAU_REDIS_URL): together they stay
within the global and per-chat caps that each alone would keep, a 429 pauses them all, and without Redis no
message is sent unpaced or lost."""
from __future__ import annotations

import asyncio
import uuid

import pytest
import sqlalchemy as sa
from redis.asyncio import Redis

from bot.delivery.dispatcher import OutboxDispatcher
from bot.delivery.shared_limits import SharedSendPacer
from core.db import tables as t
from devkit.botapi import BotApiStandIn
from tests.bot.dispatch_support import EchoRenderer, make_bot, queue, statuses

pytestmark = pytest.mark.slow  # Telegram pace through Redis, in real seconds

RATE = 10  # a lower cap than Telegram's 30/s keeps the runs short; the rules are the same
CHATS = 12
# Two seconds of sends at RATE: unshared, the two dispatchers together would send twice RATE in the first.
BURST = 2 * RATE


@pytest.fixture
async def namespace(redis_url):
    """A Redis key prefix of this test's own, removed afterwards."""
    prefix = f"rastau:test:{uuid.uuid4().hex}"
    yield prefix
    redis = Redis.from_url(redis_url)
    keys = [key async for key in redis.scan_iter(match=f"{prefix}:*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


@pytest.fixture
async def strict_standin():
    """A stand-in that refuses (429) and counts every send over RATE per second or 1 per second per chat."""
    api = BotApiStandIn(enforce_limits=True, limit_global=RATE, limit_per_chat=1)
    await api.start()
    yield api
    await api.stop()


async def _run_two(contexts, standin, pacers) -> list[OutboxDispatcher]:
    bots = [make_bot(standin.base_url) for _ in contexts]
    dispatchers = [OutboxDispatcher(ctx, bot, EchoRenderer(), worker_id=f"w{i}", batch=5, pacer=pacer,
                                    rate_global=RATE, rate_per_chat=1)
                   for i, (ctx, bot, pacer) in enumerate(zip(contexts, bots, pacers))]
    try:
        await asyncio.gather(*(d.drain() for d in dispatchers))
    finally:
        for bot in bots:
            await bot.session.close()
    return dispatchers


def _shared(redis_url: str, namespace: str) -> SharedSendPacer:
    return SharedSendPacer.from_url(redis_url, RATE, 1, namespace=namespace)


async def test_two_dispatchers_sharing_redis_keep_one_set_of_limits(two_contexts, strict_standin, redis_url,
                                                                    namespace):
    ids = [await queue(two_contexts[0], 5000 + i % CHATS, "paced") for i in range(BURST)]
    pacers = [_shared(redis_url, namespace), _shared(redis_url, namespace)]  # two connections, as two processes have
    try:
        dispatchers = await _run_two(two_contexts, strict_standin, pacers)
    finally:
        for pacer in pacers:
            await pacer.close()
    assert sorted(int(m.text.rsplit("#", 1)[1]) for m in strict_standin.sent) == ids  # each exactly once
    assert all(d._renderer.rendered for d in dispatchers), "both dispatchers took a share"
    assert strict_standin.limit_violations == 0
    assert strict_standin.max_rate() <= RATE and strict_standin.max_rate_per_chat() <= 1


async def test_without_the_shared_pacer_two_dispatchers_break_the_limit(two_contexts, strict_standin):
    """The control for the test above: each dispatcher keeping RATE alone sends up to twice RATE together."""
    for i in range(BURST):
        await queue(two_contexts[0], 5000 + i % CHATS, "unpaced")
    await _run_two(two_contexts, strict_standin, [None, None])
    assert strict_standin.limit_violations > 0 or strict_standin.max_rate() > RATE


async def test_a_429_from_telegram_pauses_every_dispatcher(two_contexts, strict_standin, redis_url, namespace):
    retry_after = 2  # past the second of grace below: a second in which neither dispatcher may send
    for i in range(2 * RATE):
        await queue(two_contexts[0], 6000 + i, "after a pause")
    strict_standin.fail_next(1, "429", retry_after=retry_after)
    pacers = [_shared(redis_url, namespace), _shared(redis_url, namespace)]
    try:
        await _run_two(two_contexts, strict_standin, pacers)
    finally:
        for pacer in pacers:
            await pacer.close()
    refused = next(a.at for a in strict_standin.requests if a.outcome == "429")
    # a second's grace for sends already on their way when the 429 came; the rest of the pause must be silent
    in_pause = [m for m in strict_standin.sent if refused + 1.0 < m.at < refused + retry_after]
    assert in_pause == [], "a dispatcher sent while Telegram had asked everyone to wait"
    assert len(strict_standin.sent) == 2 * RATE and strict_standin.limit_violations == 0


async def test_without_redis_nothing_is_sent_unpaced_and_nothing_is_lost(ctx, standin):
    message_id = await queue(ctx, 7100, "waits for the pacer")
    bot = make_bot(standin.base_url)
    pacer = SharedSendPacer.from_url("redis://127.0.0.1:1/0", RATE, 1)  # nothing listens on port 1
    try:
        await OutboxDispatcher(ctx, bot, EchoRenderer(), worker_id="lonely", pacer=pacer).drain()
    finally:
        await pacer.close()
        await bot.session.close()
    assert standin.sent == []
    assert (await statuses(ctx))[message_id] == "pending"
    async with ctx.uow(read_only=True) as uow:
        row = (await uow.conn.execute(sa.select(t.outbox).where(t.outbox.c.id == message_id))).one()
    assert row.failures == 0 and "handed back" in row.last_error  # no retry budget spent on Redis being away


async def test_the_bot_process_shares_limits_exactly_when_redis_is_configured(settings, redis_url):
    from bot.__main__ import shared_pacer
    from core.config import Settings

    assert shared_pacer(Settings(_env_file=None, **{**settings.model_dump(), "redis_url": None})) is None
    pacer = shared_pacer(Settings(_env_file=None, **{**settings.model_dump(), "redis_url": redis_url}))
    try:
        assert isinstance(pacer, SharedSendPacer)
    finally:
        await pacer.close()
