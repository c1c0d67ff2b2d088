"""The payer's webhook: every dispute, enrolment dispute, flag and checkpoint POSTed as signed JSON, at least once
through the outbox (retries with backoff, a dead letter the operator sees and requeues), one id and one body per
event so the receiver dedupes. Against the stand-in receiver (devkit/payer.py) with injected faults, on SQLite and
PostgreSQL."""
from __future__ import annotations

import datetime as dt

import pytest
from pydantic import SecretStr, ValidationError

from bot.delivery.dispatcher import MAX_FAILURES
from bot.delivery.webhook import PayerWebhookSender
from core.checkpoint import read_checkpoint
from core.cli import main as rastau
from core.config import Settings
from core.db.uow import UnitOfWorkFactory
from core.model import OutboxStatus, Recipient
from core.services import Context, flag_lists, payer, registry
from core.services.checkpoints import push_checkpoint
from core.services.visits import close_expired_windows, explain_dispute, patient_disputes
from core.signing import Signer, new_seed_b64
from devkit.payer import PayerStandIn
from tests.bot.support import visit
from tests.commands import run_command_async
from tests.conftest import test_settings as settings_for

SECRET = "payer-shared-secret-0123456789"


@pytest.fixture
async def receiver():
    stand_in = PayerStandIn(SECRET)
    await stand_in.start()
    yield stand_in
    await stand_in.stop()


@pytest.fixture
def settings(db_url, receiver):
    return settings_for(db_url, payer_webhook_url=receiver.url, payer_webhook_secret=SECRET)


@pytest.fixture
async def sender(ctx):
    webhook = PayerWebhookSender(ctx, worker_id="test", timeout=0.5, lease=dt.timedelta(seconds=5))
    yield webhook
    await webhook.close()


async def dispute(ctx, w, reason: str | None = None):
    v = await visit(ctx, w, w.p1, -120)
    await close_expired_windows(ctx)
    await patient_disputes(ctx, v.id, [w.p1.id])
    if reason:
        await explain_dispute(ctx, v.id, [w.p1.id], reason)
    return v


async def payer_rows(ctx):
    async with ctx.uow(read_only=True) as uow:
        return await uow.outbox.by_recipient_kind(Recipient.PAYER)


async def test_a_dispute_and_its_reason_reach_the_payer_signed(ctx, clinic_world, sender, receiver, world):
    v = await dispute(ctx, clinic_world, reason="Мен ол күні Алматыда болдым")
    await world.deliver()  # the chats' dispatcher runs first and must leave the payer's events alone
    assert [r.status for r in await payer_rows(ctx)] == ["pending", "pending"]
    assert await sender.drain() == 2
    assert receiver.forged == 0 and list(receiver.events) == [f"dispute:{v.id}", f"dispute-reason:{v.id}"]
    disputed = receiver.events[f"dispute:{v.id}"]
    assert disputed["type"] == "visit.disputed" and disputed["data"]["visit_id"] == v.id
    assert disputed["data"]["clinic_id"] == clinic_world.clinic.id and disputed["data"]["verified_by"] is None
    assert receiver.events[f"dispute-reason:{v.id}"]["data"]["reason"] == "Мен ол күні Алматыда болдым"
    assert clinic_world.p1.iin not in b"".join(receiver.bodies).decode()
    assert [r.status for r in await payer_rows(ctx)] == ["sent", "sent"]


async def test_failures_are_retried_with_backoff_and_the_same_body(ctx, clinic_world, sender, receiver):
    receiver.fail_next(3, status=500)
    v = await dispute(ctx, clinic_world)
    for failures in (1, 2, 3):
        assert await sender.run_once() == 1
        row = (await payer_rows(ctx))[0]
        assert (row.status, row.failures) == ("pending", failures) and "HTTP 500" in row.last_error
        assert await sender.run_once() == 0, "not due again before its backoff"
        ctx.clock.advance(dt.timedelta(seconds=2 ** failures))
    assert await sender.run_once() == 1
    assert (await payer_rows(ctx))[0].status == "sent"
    assert receiver.deliveries[f"dispute:{v.id}"] == 4 and len(set(receiver.bodies)) == 1, "one event, one body"
    assert list(receiver.events) == [f"dispute:{v.id}"]


@pytest.mark.slow  # waits out a real 0.5 s timeout
async def test_a_slow_receiver_gets_the_event_again_and_keeps_it_once(ctx, clinic_world, sender, receiver):
    """The receiver took the event but answered after our timeout: at least once means it comes again."""
    receiver.fail_next(1, status=200, delay=1.0)
    v = await dispute(ctx, clinic_world)
    await sender.run_once()
    row = (await payer_rows(ctx))[0]
    assert row.status == "pending" and "Timeout" in row.last_error
    ctx.clock.advance(dt.timedelta(seconds=2))
    await sender.run_once()
    assert receiver.deliveries[f"dispute:{v.id}"] == 2 and list(receiver.events) == [f"dispute:{v.id}"]


async def test_a_dead_letter_is_listed_for_the_operator_and_requeued(ctx, clinic_world, sender, receiver, db_url):
    receiver.fail_next(MAX_FAILURES, status=503)
    v = await dispute(ctx, clinic_world)
    for _ in range(MAX_FAILURES):
        await sender.run_once()
        ctx.clock.advance(dt.timedelta(minutes=11))
    dead = await payer.payer_events(ctx, OutboxStatus.FAILED)
    assert [(e.event_id, e.failures) for e in dead] == [(f"dispute:{v.id}", MAX_FAILURES - 1)]
    assert "gave up" in dead[0].last_error and await sender.run_once() == 0, "given up: not retried by itself"
    env = {"RASTAU_DATABASE_URL": db_url, "RASTAU_MODE": "dev"}
    listed = await run_command_async(rastau, "rastau", env, "payer-events", "--failed")
    assert listed.returncode == 0 and f"failed\tvisit.disputed\tdispute:{v.id}" in listed.stdout, listed.stderr
    assert "HTTP 503" in listed.stdout
    requeued = await run_command_async(rastau, "rastau", env, "payer-events", "--requeue", str(dead[0].outbox_id))
    assert requeued.returncode == 0 and "queued again" in requeued.stdout
    ctx.clock.set(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))  # the command queued it by the system clock
    assert await sender.run_once() == 1 and f"dispute:{v.id}" in receiver.events
    assert await payer.payer_events(ctx, OutboxStatus.FAILED) == []
    again = await run_command_async(rastau, "rastau", env, "payer-events", "--requeue", str(dead[0].outbox_id))
    assert again.returncode == 2 and "no failed payer event" in again.stderr


async def test_the_days_flags_reach_the_payer_once(ctx, clinic_world, sender, receiver):
    w = clinic_world
    await visit(ctx, w, w.p2, 0)
    await flag_lists.import_deaths(ctx, f"{w.p2.iin},2025-01-01\n", "registry extract")
    day = dt.date(2026, 11, 25)
    assert await payer.queue_flag_events(ctx, day) >= 1
    assert await payer.queue_flag_events(ctx, day) == 0, "a repeat for the same day adds nothing"
    await sender.drain()
    after_death = [e for e in receiver.events.values() if e["data"]["rule"] == "after_death"]
    assert len(after_death) == 1 and after_death[0]["type"] == "flag.raised"
    assert after_death[0]["id"] == f"flag:after_death:{w.clinic.id}:{w.doctor.id}:2026-11-25"
    assert after_death[0]["data"]["visit_ids"] and "date of death" in after_death[0]["data"]["explanation"]


def test_a_body_changed_in_transit_fails_the_signature():
    body = payer.body_bytes({"id": "dispute:1", "type": "visit.disputed", "data": {"visit_id": 1}})
    header = payer.signature(SECRET, body)
    assert header.startswith("sha256=") and payer.signature_valid(SECRET, body, header)
    assert not payer.signature_valid(SECRET, body.replace(b":1}", b":2}"), header)
    assert not payer.signature_valid("another-secret-of-16+", body, header)
    assert not payer.signature_valid(SECRET, body, None)


def test_a_webhook_url_without_a_secret_is_refused():
    with pytest.raises(ValidationError, match="RASTAU_PAYER_WEBHOOK_SECRET"):
        Settings(_env_file=None, mode="dev", payer_webhook_url="https://fund.example.kz/rastau")
    with pytest.raises(ValidationError, match="at least 16"):
        Settings(_env_file=None, mode="dev", payer_webhook_url="https://fund.example.kz/rastau",
                 payer_webhook_secret="short")


async def test_no_webhook_configured_queues_nothing(db_url, engine, clock):
    plain = Context.build(settings_for(db_url), UnitOfWorkFactory(engine), clock)
    clinic = await registry.create_clinic(plain, "Quiet polyclinic")
    async with plain.uow() as uow:
        assert await payer.queue_payer_event(uow, plain.settings, "x", "visit.disputed", clock.now(), {}) == 0
    assert clinic.id and await payer_rows(plain) == []


async def test_each_new_checkpoint_reaches_the_payer_signed_once(ctx, clinic_world, sender, receiver):
    signer = Signer.from_settings(ctx.settings.model_copy(update={"signing_key": SecretStr(new_seed_b64())}))
    assert await push_checkpoint(ctx, signer) == 1  # no auditor linked: the webhook only
    assert await push_checkpoint(ctx, signer) == 0, "the same heads are one event"
    await sender.drain()
    event, = receiver.events.values()
    assert event["type"] == "audit.checkpoint" and event["id"].startswith("checkpoint:")
    checkpoint = read_checkpoint(event["data"]["file"], signer.public)
    assert [h.chain for h in checkpoint.heads] == [h["chain"] for h in event["data"]["heads"]]


async def test_a_sender_restarted_under_its_id_resends_what_it_held_at_once(ctx, clinic_world, receiver):
    """Killed between its claim and the POST: the restarted sender (same RASTAU_DISPATCHER_ID) does not wait out the
    claim's lease."""
    v = await dispute(ctx, clinic_world)
    async with ctx.uow() as uow:
        assert len(await uow.outbox.claim_due(ctx.clock.now(), "pod-1:payer", dt.timedelta(minutes=5), 10,
                                              payer=True)) == 1
        await uow.commit()
    restarted = PayerWebhookSender(ctx, worker_id="pod-1")
    try:
        assert await restarted.run_once() == 1
    finally:
        await restarted.close()
    assert list(receiver.events) == [f"dispute:{v.id}"]


async def test_a_dispute_taken_back_and_made_again_reaches_the_payer_each_time(ctx, clinic_world, sender, receiver):
    """Issue 17: the payer hears the take-back as an event of its own, and a dispute made again after it is a new
    event (not swallowed as a repeat of the first)."""
    from core.services.chat import link_chat_by_phone
    from core.services.dispute_answers import withdraw_dispute
    w = clinic_world
    await link_chat_by_phone(ctx, 7890, w.p1.phone, "kk")
    v = await visit(ctx, w, w.p1, -120)
    await close_expired_windows(ctx)
    await patient_disputes(ctx, v.id, [w.p1.id], chat_id=7890)
    await withdraw_dispute(ctx, v.id, [w.p1.id], 7890)
    await patient_disputes(ctx, v.id, [w.p1.id])
    assert await sender.drain() == 3
    assert list(receiver.events) == [f"dispute:{v.id}", f"dispute-withdrawn:{v.id}", f"dispute:{v.id}:2"]
    withdrawn = receiver.events[f"dispute-withdrawn:{v.id}"]
    assert withdrawn["type"] == "visit.dispute_withdrawn" and withdrawn["data"]["visit_id"] == v.id
    assert receiver.events[f"dispute:{v.id}:2"]["type"] == "visit.disputed"
