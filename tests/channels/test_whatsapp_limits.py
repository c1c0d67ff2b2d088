"""WhatsApp's limits (issue 14): the channel paces per business number and per recipient with the one SendPacer, so
the Cloud API stand-in enforcing Meta's limits (130429 per number, 131056 per pair) refuses nothing; the same burst
unpaced is refused, which shows the stand-in would catch it."""
from __future__ import annotations

import asyncio
import math

import pytest

from bot.channels.base import Address, ChannelName, ChannelRetry, CodeMessage
from tests.channels.whatsapp_support import start_world

RECIPIENTS = [f"7701000000{i}" for i in range(4)]


async def burst(world, clock, per_recipient: int) -> list[BaseException | None]:
    code = CodeMessage(1, "123456", "C", "D", clock.now(), clock.now(), False, "ru")

    async def one(number: str) -> BaseException | None:
        try:
            await world.channel.send_code(Address(ChannelName.WHATSAPP, number, None), code, not_after=math.inf)
        except ChannelRetry as exc:
            return exc
        return None

    return await asyncio.gather(*(one(n) for n in RECIPIENTS for _ in range(per_recipient)))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_pacer_keeps_meta_limits_per_number_and_per_recipient(db_url, engine, clock):
    world, stop = await start_world(db_url, engine, clock)
    try:
        # Meta's pace on the world's (ten times real time), counted by the stand-in on the same clock
        world.api.enforce_limits, world.api.limit_per_second, world.api.pace_clock = True, 5, world.pace.now
        world.api.pair_cap, world.api.pair_span = 1, 1.0
        for number in RECIPIENTS:
            world.api.add_user(number)
        world.channel._pacer = world.pacer(5, 1)  # what RASTAU_WHATSAPP_RATE=5, ..._PER_RECIPIENT=1 build
        outcomes = await burst(world, clock, per_recipient=3)
        assert outcomes == [None] * 12
        assert world.api.limit_violations == 0 and len(world.api.sent) == 12
        assert world.api.max_rate() <= 5
    finally:
        await stop()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_unpaced_the_same_burst_is_refused_and_each_refusal_is_a_retry(db_url, engine, clock):
    world, stop = await start_world(db_url, engine, clock)
    try:
        world.api.enforce_limits, world.api.limit_per_second = True, 5
        world.api.pair_cap, world.api.pair_span = 1, 1.0
        for number in RECIPIENTS:
            world.api.add_user(number)
        outcomes = await burst(world, clock, per_recipient=3)  # the world's pacer allows 1000/s
        refused = [o for o in outcomes if o is not None]
        assert refused and world.api.limit_violations == len(refused)
        assert {o.reason for o in refused} <= {"whatsapp 130429", "whatsapp 131056"}  # retried later, not lost
        assert len(world.api.sent) + len(refused) == 12
    finally:
        await stop()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_under_random_faults_every_send_is_accepted_once_or_handed_back_for_a_retry(db_url, engine, clock):
    """Seeded chaos at the stand-in (5xx, rate limits, dropped connections): each send either reaches WhatsApp once
    or comes back as ChannelRetry (the dispatcher reschedules it); none is lost silently, none accepted twice."""
    world, stop = await start_world(db_url, engine, clock)
    try:
        for number in RECIPIENTS:
            world.api.add_user(number)
        world.api.random_faults(2026, **{"500": 0.2, "130429": 0.1, "131056": 0.1, "drop": 0.1})
        outcomes = await burst(world, clock, per_recipient=5)
        retried = sum(o is not None for o in outcomes)
        assert 0 < retried < len(outcomes)
        assert len(world.api.sent) == len(outcomes) - retried  # every other send accepted, once
        assert all(o.reason.startswith("whatsapp ") for o in outcomes if o is not None)
    finally:
        await stop()
