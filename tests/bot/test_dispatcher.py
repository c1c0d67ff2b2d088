"""The outbox dispatcher against a real aiogram Bot talking HTTP to the Bot API stand-in."""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from bot.delivery.dispatcher import OutboxDispatcher
from bot.delivery.limits import SendPacer
from core.clock import SystemClock
from core.db import tables as t
from core.db.uow import UnitOfWorkFactory
from core.services import Context
from devkit.botapi import BotApiStandIn
from tests.bot.dispatch_support import TOKEN, EchoRenderer, FastTime, make_bot, queue, statuses

ROOT = Path(__file__).parents[2]


@pytest.fixture
def fast():
    """Telegram's pace ten times faster: the pacers below and the stand-in that counts the limits share it."""
    return FastTime(10)


@pytest.fixture
async def standin(fast):
    api = BotApiStandIn(clock=fast.now)
    api.add_bot(TOKEN, "rastau_test_bot")
    await api.start()
    yield api
    await api.stop()


@pytest.fixture
async def bot(standin):
    b = make_bot(standin.base_url)
    yield b
    await b.session.close()


def texts_to(standin, chat_id):
    return [m.text for m in standin.messages_to(chat_id)]


async def test_due_messages_go_out_once_and_future_ones_wait(ctx, bot, standin):
    now = ctx.clock.now()
    first = await queue(ctx, 1001, "now")
    later = await queue(ctx, 1002, "later", due=now + dt.timedelta(minutes=10))
    dispatcher = OutboxDispatcher(ctx, bot, EchoRenderer(), worker_id="w1", rate_global=1000, rate_per_chat=1000)
    assert await dispatcher.drain() == 1
    assert texts_to(standin, 1001) == [f"now #{first}"] and texts_to(standin, 1002) == []
    ctx.clock.advance(dt.timedelta(minutes=10))
    await dispatcher.drain()
    assert texts_to(standin, 1002) == [f"later #{later}"]
    await dispatcher.drain()
    assert len(standin.sent) == 2
    assert (await statuses(ctx)) == {first: "sent", later: "sent"}


async def test_skipped_message_is_not_sent_and_not_retried(ctx, bot, standin):
    mid = await queue(ctx, 1001, skip=True)
    renderer = EchoRenderer()
    dispatcher = OutboxDispatcher(ctx, bot, renderer, worker_id="w1")
    await dispatcher.drain()
    ctx.clock.advance(dt.timedelta(hours=1))
    await dispatcher.drain()
    assert standin.sent == [] and renderer.rendered == [mid] and (await statuses(ctx))[mid] == "skipped"


async def test_429_waits_retry_after_then_delivers_once(ctx, bot, standin, fast):
    mid = await queue(ctx, 1001, "slow down")
    standin.fail_next(1, "429", retry_after=1)
    dispatcher = OutboxDispatcher(ctx, bot, EchoRenderer(), worker_id="w1", pacer=SendPacer(1000, 1000, fast))
    started = fast.now()
    await dispatcher.drain()
    waited = fast.now() - started
    assert texts_to(standin, 1001) == [f"slow down #{mid}"]
    assert waited >= 1.0, f"retry_after=1 must be honoured, resent after {waited:.2f}s"
    assert (await statuses(ctx))[mid] == "sent"


async def test_403_stops_retrying_and_marks_the_patient_blocked(ctx, bot, standin, clinic_world):
    patient = clinic_world.p1
    async with ctx.uow() as uow:
        await uow.patients.set_chat(patient.phone, 5005)
        await uow.commit()
    mid = await queue(ctx, 5005, "code")
    standin.block_user(5005)
    dispatcher = OutboxDispatcher(ctx, bot, EchoRenderer(), worker_id="w1")
    await dispatcher.drain()
    for _ in range(3):
        ctx.clock.advance(dt.timedelta(hours=1))
        await dispatcher.drain()
    assert (await statuses(ctx))[mid] == "blocked"
    async with ctx.uow() as uow:
        assert (await uow.patients.get(patient.id)).chat_blocked is True
    assert texts_to(standin, 5005) == []
    assert standin.requests_to(5005) == 1, "a blocked user must not be retried"


async def test_server_errors_back_off_and_deliver_once(ctx, bot, standin):
    mid = await queue(ctx, 1001, "eventually")
    standin.fail_next(2, "500")
    dispatcher = OutboxDispatcher(ctx, bot, EchoRenderer(), worker_id="w1")
    await dispatcher.drain()
    assert texts_to(standin, 1001) == [] and (await statuses(ctx))[mid] == "pending"
    for _ in range(3):
        ctx.clock.advance(dt.timedelta(minutes=1))
        await dispatcher.drain()
    assert texts_to(standin, 1001) == [f"eventually #{mid}"]


async def test_retry_after_a_failed_attachment_does_not_repeat_the_text(ctx, bot, standin):
    mid = await queue(ctx, 1001, "digest", file="digest.csv")
    standin.fail_next(1, "500", method="sendDocument")
    dispatcher = OutboxDispatcher(ctx, bot, EchoRenderer(), worker_id="w1", rate_global=1000, rate_per_chat=1000)
    await dispatcher.drain()
    ctx.clock.advance(dt.timedelta(minutes=1))
    await dispatcher.drain()
    sent = standin.messages_to(1001)
    assert [m.method for m in sent] == ["sendMessage", "sendDocument"]
    assert sent[1].document[0] == "digest.csv" and (await statuses(ctx))[mid] == "sent"


async def test_a_crash_after_the_text_does_not_repeat_it_after_restart(ctx, bot, standin):
    mid = await queue(ctx, 1001, "digest", file="digest.csv")
    standin.fail_next(1, "slow", method="sendDocument")
    crashing = asyncio.create_task(OutboxDispatcher(ctx, bot, EchoRenderer(), worker_id="w1").drain())
    while not any(r.method == "sendDocument" for r in standin.requests):  # noqa: ASYNC110 - the stand-in's log has no event
        await asyncio.sleep(0.01)
    crashing.cancel()  # the process dies while the document is on its way
    with pytest.raises(asyncio.CancelledError):
        await crashing
    await OutboxDispatcher(ctx, bot, EchoRenderer(), worker_id="w1").drain()
    assert [m.method for m in standin.messages_to(1001)] == ["sendMessage", "sendDocument"]
    assert (await statuses(ctx))[mid] == "sent"


async def test_rate_caps_hold_overall_and_per_chat(ctx, bot, standin, fast):
    for chat in range(40):
        await queue(ctx, 2000 + chat, "burst")
    for _ in range(3):
        await queue(ctx, 3000, "same chat")
    dispatcher = OutboxDispatcher(ctx, bot, EchoRenderer(), worker_id="w1", pacer=SendPacer(20, 1, fast))
    await dispatcher.drain()
    assert len(standin.sent) == 43
    assert standin.max_rate(window=1.0) <= 20
    assert standin.max_rate_per_chat(window=1.0) <= 1


async def test_the_default_pace_never_trips_telegrams_limits(ctx, fast):
    strict = BotApiStandIn(enforce_limits=True, clock=fast.now)  # 429 past 30 sends a second overall or 1 per chat
    await strict.start()
    bot = make_bot(strict.base_url)
    try:
        for chat in range(45):
            await queue(ctx, 2000 + chat, "burst")
        for _ in range(3):
            await queue(ctx, 3000, "same chat")
        default_pace = SendPacer(ctx.settings.send_rate_global, ctx.settings.send_rate_per_chat, fast)
        await OutboxDispatcher(ctx, bot, EchoRenderer(), worker_id="w1", pacer=default_pace).drain()
    finally:
        await bot.session.close()
        await strict.stop()
    assert len(strict.sent) == 48 and strict.limit_violations == 0


@pytest.mark.slow  # answers slower than the client's timeout, in real seconds
async def test_a_misbehaving_telegram_loses_nothing_and_duplicates_nothing(ctx, fast):
    chaos = BotApiStandIn(enforce_limits=True, slow_seconds=2.5, clock=fast.now)
    chaos.random_faults(2026, p429=0.05, p500=0.1, pslow=0.1, pdrop=0.1)
    await chaos.start()
    bot = make_bot(chaos.base_url, timeout=2.0)
    ids = [await queue(ctx, 6000 + i % 12, "chaos") for i in range(36)]
    try:
        dispatcher = OutboxDispatcher(ctx, bot, EchoRenderer(), worker_id="w1", lease=dt.timedelta(seconds=10),
                                      pacer=SendPacer(ctx.settings.send_rate_global, ctx.settings.send_rate_per_chat,
                                                      fast))
        for _ in range(30):
            await dispatcher.drain()
            if set((await statuses(ctx)).values()) == {"sent"}:
                break
            ctx.clock.advance(dt.timedelta(minutes=10))  # past every backoff
    finally:
        await bot.session.close()
        await chaos.stop()
    assert sorted(int(m.text.rsplit("#", 1)[1]) for m in chaos.sent) == ids
    assert {a.outcome for a in chaos.requests} >= {"ok", "500", "slow", "drop"}
    assert chaos.limit_violations == 0 and chaos.max_rate() <= 30 and chaos.max_rate_per_chat() <= 1


@pytest.mark.slow  # Telegram pace in real seconds, or a dispatcher process
async def test_two_dispatchers_on_postgresql_send_each_message_once(two_contexts, standin):
    ids = [await queue(two_contexts[0], 4000 + i % 50, "x") for i in range(300)]
    bots = [make_bot(standin.base_url), make_bot(standin.base_url)]
    try:
        dispatchers = [OutboxDispatcher(c, b, EchoRenderer(), worker_id=f"w{i}", rate_global=10_000,
                                        rate_per_chat=10_000, batch=10)
                       for i, (c, b) in enumerate(zip(two_contexts, bots))]
        await asyncio.gather(*(d.drain() for d in dispatchers))
    finally:
        for b in bots:
            await b.session.close()
    delivered = [int(m.text.rsplit("#", 1)[1]) for m in standin.sent]
    assert sorted(delivered) == sorted(ids), "every message exactly once"
    both = {r for d in dispatchers for r in d._renderer.rendered}
    assert both == set(ids)
    assert all(len(d._renderer.rendered) > 0 for d in dispatchers), "both dispatchers took a share"


@pytest.mark.slow  # Telegram pace in real seconds, or a dispatcher process
async def test_a_claim_outlived_by_its_queue_is_handed_back_not_sent_twice(engine, settings, standin, db_url):
    """Six messages to one chat take five seconds at 1/s; a 3.5 s claim must not let a second dispatcher
    resend what the first one still holds."""
    if not db_url.startswith("postgresql"):
        pytest.skip("several dispatchers are a PostgreSQL deployment; SQLite runs one")
    ctx = Context.build(settings, UnitOfWorkFactory(engine), SystemClock())  # leases run on real time
    ids = [await queue(ctx, 9009, "queued") for _ in range(6)]
    bots = [make_bot(standin.base_url, timeout=0.5), make_bot(standin.base_url, timeout=0.5)]
    stop = asyncio.Event()
    dispatchers = [OutboxDispatcher(ctx, b, EchoRenderer(), worker_id=f"w{i}", rate_per_chat=1,
                                    lease=dt.timedelta(seconds=3.5)) for i, b in enumerate(bots)]
    runs = [asyncio.create_task(d.run_forever(stop, idle=0.1)) for d in dispatchers]
    try:
        for _ in range(150):
            await asyncio.sleep(0.1)
            if (await statuses(ctx)) == dict.fromkeys(ids, "sent"):
                break
        await asyncio.sleep(1.0)  # a duplicate would be on its way by now
    finally:
        stop.set()
        await asyncio.gather(*runs)
        for b in bots:
            await b.session.close()
    assert sorted(int(m.text.rsplit("#", 1)[1]) for m in standin.sent) == ids


CRASHING_WORKER = '''
import asyncio, os, sys
sys.path.insert(0, os.environ["ROOT"])
from tests.bot.dispatch_support import make_bot
from bot.delivery.dispatcher import OutboxDispatcher
from core.clock import SystemClock
from core.db.engine import create_engine
from core.db.uow import UnitOfWorkFactory
from core.services import Context
from tests.conftest import test_settings

class Hang:
    async def render(self, message):
        print("claimed", message.id, flush=True)
        await asyncio.sleep(3600)   # killed here: after the claim was committed, before the send

async def main():
    engine = create_engine(os.environ["DB_URL"])
    settings = test_settings(os.environ["DB_URL"], code_hmac_key=os.environ["K1"], template_key=os.environ["K2"],
                             api_key_pepper=os.environ["K3"])
    ctx = Context.build(settings, UnitOfWorkFactory(engine), SystemClock())
    bot = make_bot(os.environ["API"])
    await OutboxDispatcher(ctx, bot, Hang(), worker_id="crashy").run_once()

asyncio.run(main())
'''


@pytest.mark.slow  # Telegram pace in real seconds, or a dispatcher process
async def test_killed_between_commit_and_send_delivers_once_after_restart(ctx, settings, db_url, standin, bot):
    mid = await queue(ctx, 7007, "survives")
    env = dict(os.environ, ROOT=str(ROOT), DB_URL=db_url, API=standin.base_url,
               K1=settings.code_hmac_key.get_secret_value(), K2=settings.template_key.get_secret_value(),
               K3=settings.api_key_pepper.get_secret_value())
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_WORKER], env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        assert line.strip() == f"claimed {mid}"
        assert (await statuses(ctx))[mid] == "sending"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert standin.sent == []
    restarted = OutboxDispatcher(ctx, bot, EchoRenderer(), worker_id="crashy")
    ctx.clock.set(dt.datetime.now(dt.UTC))  # the crashed process claimed on the system clock
    await restarted.drain()
    await restarted.drain()
    assert texts_to(standin, 7007) == [f"survives #{mid}"]
    assert (await statuses(ctx))[mid] == "sent"


async def test_a_claim_left_by_a_dead_dispatcher_expires_for_the_others(ctx, bot, standin):
    mid = await queue(ctx, 8008, "orphan")
    async with ctx.uow() as uow:
        await uow.outbox.claim_due(ctx.clock.now(), "dead-host:1", dt.timedelta(seconds=60), 10)
        await uow.commit()
    other = OutboxDispatcher(ctx, bot, EchoRenderer(), worker_id="alive")
    await other.drain()
    assert standin.sent == []
    ctx.clock.advance(dt.timedelta(seconds=61))
    await other.drain()
    assert texts_to(standin, 8008) == [f"orphan #{mid}"]


async def test_a_message_dispatchers_keep_dying_on_is_given_up_not_claimed_forever(ctx, bot, standin):
    from bot.delivery.dispatcher import MAX_CLAIMS

    message_id = await queue(ctx, 4343, "poison")
    async with ctx.uow() as uow:
        await uow.conn.execute(sa.update(t.outbox).where(t.outbox.c.id == message_id).values(attempts=MAX_CLAIMS))
        await uow.commit()
    await OutboxDispatcher(ctx, bot, EchoRenderer(), worker_id="w").drain()
    assert (await statuses(ctx))[message_id] == "failed"
    assert standin.messages_to(4343) == []


class NeverYourTurn:
    """A pacer whose turn always comes too late (a long 429 pause, Redis away): every claim is handed back."""

    @contextlib.asynccontextmanager
    async def turn(self, chat_id, not_after=float("inf")):
        from bot.delivery.limits import TooLate
        raise TooLate(time.monotonic() + 1)
        yield

    def now(self):
        return time.monotonic()

    async def pause(self, seconds):
        pass


async def test_hand_backs_are_outcomes_and_never_make_a_message_poison(ctx, bot, standin):
    """A dispatcher that hands a message back is alive: only claims without an outcome count toward MAX_CLAIMS."""
    from bot.delivery.dispatcher import MAX_CLAIMS

    message_id = await queue(ctx, 4545, "patient")
    async with ctx.uow() as uow:
        await uow.conn.execute(sa.update(t.outbox).where(t.outbox.c.id == message_id).values(attempts=MAX_CLAIMS - 1))
        await uow.commit()
    waiting = OutboxDispatcher(ctx, bot, EchoRenderer(), worker_id="w", pacer=NeverYourTurn())
    for _ in range(5):
        ctx.clock.advance(dt.timedelta(seconds=2))
        assert await waiting.run_once() == 1
        assert (await statuses(ctx))[message_id] == "pending"
    ctx.clock.advance(dt.timedelta(seconds=2))
    await OutboxDispatcher(ctx, bot, EchoRenderer(), worker_id="w2", rate_global=1000, rate_per_chat=1000).drain()
    assert texts_to(standin, 4545) == [f"patient #{message_id}"]


async def test_an_outcome_is_not_recorded_over_a_claim_another_dispatcher_took(ctx):
    message_id = await queue(ctx, 4444, "contested")
    async with ctx.uow() as uow:
        await uow.outbox.claim_due(ctx.clock.now(), "late", dt.timedelta(seconds=1), 10)
        await uow.commit()
    ctx.clock.advance(dt.timedelta(seconds=5))
    async with ctx.uow() as uow:
        await uow.outbox.claim_due(ctx.clock.now(), "new-owner", dt.timedelta(seconds=60), 10)
        await uow.commit()
    async with ctx.uow() as uow:  # the late dispatcher's retry must not reset the new owner's claim
        assert not await uow.outbox.retry_later(message_id, ctx.clock.now(), "500", worker_id="late")
        assert not await uow.outbox.finish(message_id, "failed", ctx.clock.now(), worker_id="late")
        await uow.commit()
        row = await uow.outbox.get(message_id)
    assert (row.status, row.claimed_by, row.failures) == ("sending", "new-owner", 0)
