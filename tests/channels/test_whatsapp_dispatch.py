"""WhatsApp through the real outbox dispatcher (issue 14): a patient on WhatsApp gets the code and the question as
templates, one who blocked the Telegram bot is reached on WhatsApp, delivery statuses land on the row the dispatcher
marked sent, a rate limit only delays, and a number that turns out to have no WhatsApp ends as no_channel (SMS off
here) instead of "sent"."""
from __future__ import annotations

import datetime as dt
import re

import pytest
from sqlalchemy import select

from bot import texts
from bot.app import create_bot
from bot.delivery.dispatcher import OutboxDispatcher
from bot.i18n import make_i18n
from bot.rendering import OutboxRenderer
from core.channels import ChannelName
from core.clock import ALMATY
from core.db import tables as t
from core.model import VisitState
from core.services import registry
from core.services.digest import build_digest
from core.services.visits import close_expired_windows, register_visit
from devkit.botapi import BotApiStandIn
from tests.bot.support import close_bot
from tests.channels.test_whatsapp import linked
from tests.channels.whatsapp_support import start_world, wa_id
from tests.conftest import VALID_IINS

ASEL = wa_id("+77011234567")
START = dt.datetime(2026, 11, 25, 11, 0, tzinfo=ALMATY)
TELEGRAM_CHAT = 5550001


@pytest.fixture
async def both(db_url, engine, clock):
    world, stop = await start_world(db_url, engine, clock)
    telegram = BotApiStandIn()
    await telegram.start()
    bot = create_bot("555000:whatsapp-test", telegram.base_url, timeout=5)
    i18n = make_i18n()
    renderer = OutboxRenderer(world.ctx, i18n, channels=frozenset({ChannelName.TELEGRAM, ChannelName.WHATSAPP}))
    world.dispatcher = OutboxDispatcher(world.ctx, bot, renderer, worker_id="wa-test", pacer=world.pacer(),
                                        channels={ChannelName.WHATSAPP: world.channel})
    world.telegram = telegram
    clinic = await registry.create_clinic(world.ctx, "Emhana No. 5")
    doctor = await registry.add_doctor(world.ctx, clinic.id, "Aidos Seitkali", "8 (701) 111-22-33")
    asel = (await registry.upsert_patient(world.ctx, clinic.id, VALID_IINS[0], "Asel N.", "87011234567",
                                          "ru")).patient
    world.api.add_user(ASEL)
    world.people = type("People", (), dict(clinic=clinic, doctor=doctor, asel=asel))
    yield world
    await close_bot(bot)
    await telegram.stop()
    await stop()


async def a_visit(world):
    return await register_visit(world.ctx, clinic_id=world.people.clinic.id, doctor_id=world.people.doctor.id,
                                patient_id=world.people.asel.id, start=START, duration=dt.timedelta(minutes=15),
                                mode="in_person", service_code="A01")


async def rows_of(world, visit_id: int, kind: str):
    async with world.ctx.uow() as uow:
        return (await uow.conn.execute(select(t.outbox).where(t.outbox.c.visit_id == visit_id,
                                                              t.outbox.c.kind == kind))).all()


async def at_code_time(world) -> None:
    world.ctx.clock.set(START - dt.timedelta(minutes=10))
    await world.dispatcher.drain()
    await world.settle()


async def test_a_whatsapp_patient_gets_the_code_and_the_question_as_templates(both):
    await linked(both, ASEL)
    visit = await a_visit(both)
    await at_code_time(both)
    code = both.api.messages_to(ASEL)[-1]
    assert code.template == ("rastau_code", "ru")
    assert re.fullmatch(r"\d{6}", code.body["template"]["components"][0]["parameters"][0]["text"])
    [row] = await rows_of(both, visit.id, "visit_code")
    assert (row.status, row.channel, row.channel_message_id) == ("sent", "whatsapp", code.wamid)
    assert row.delivery_status == "delivered"  # WhatsApp said it arrived: the digest can say so
    both.ctx.clock.set(START + dt.timedelta(hours=2))
    await both.dispatcher.drain()
    await both.settle()
    question = both.api.messages_to(ASEL)[-1]
    assert question.template == ("rastau_visit_check", "ru")
    await both.api.user_taps(ASEL, question, question.button_payloads()[1])
    await both.settle()
    confirm = both.api.messages_to(ASEL)[-1]
    await both.api.user_taps(ASEL, confirm, confirm.button_payloads()[0])
    await both.settle()
    async with both.ctx.uow() as uow:
        assert (await uow.visits.get(visit.id)).state is VisitState.PATIENT_DISPUTED
    assert both.telegram.sent == []  # no Telegram involved


async def test_a_patient_who_blocked_the_bot_is_reached_on_whatsapp(both):
    await linked(both, ASEL)
    async with both.ctx.uow() as uow:
        await uow.patients.set_chat(both.people.asel.phone, TELEGRAM_CHAT)
        await uow.commit()
    both.telegram.block_user(TELEGRAM_CHAT)
    visit = await a_visit(both)
    await at_code_time(both)
    [row] = await rows_of(both, visit.id, "visit_code")
    assert (row.status, row.channel) == ("sent", "whatsapp")
    assert [m.template for m in both.api.messages_to(ASEL)][-1] == ("rastau_code", "ru")
    assert both.telegram.messages_to(TELEGRAM_CHAT) == []


async def test_a_rate_limit_only_delays_the_code(both):
    await linked(both, ASEL)
    visit = await a_visit(both)
    before = len(both.api.messages_to(ASEL))
    both.api.fail_next(1, "130429")
    await at_code_time(both)
    [row] = await rows_of(both, visit.id, "visit_code")
    assert row.status == "pending" and "130429" in row.last_error
    both.ctx.clock.set(row.due_at)
    await both.dispatcher.drain()
    await both.settle()
    [row] = await rows_of(both, visit.id, "visit_code")
    assert row.status == "sent" and row.delivery_status == "delivered"
    assert len(both.api.messages_to(ASEL)) == before + 1  # once


async def test_a_number_with_no_whatsapp_is_not_counted_as_reached(both):
    """WhatsApp accepts the code, then fails it (131026): the row goes back, WhatsApp is gone for the patient, and
    with no other channel the row ends no_channel rather than "sent"."""
    await linked(both, ASEL)
    both.api.users.discard(ASEL)
    visit = await a_visit(both)
    await at_code_time(both)
    await both.dispatcher.drain()
    [row] = await rows_of(both, visit.id, "visit_code")
    assert row.status != "sent" and row.last_error.startswith("no_channel")
    assert row.delivery_status == "failed"


@pytest.mark.parametrize("statuses, expected", [(("sent", "delivered"), "delivered"), (("sent",), "sent")])
async def test_the_digest_says_whether_the_code_reached_the_patient(both, statuses, expected):
    """WhatsApp reports arrival: the admin's digest tells "the code reached the patient" from "sent, arrival
    unknown" — an unverified visit whose patient had the code reads differently from one whose code may be lost."""
    both.api.auto_statuses = statuses
    await linked(both, ASEL)
    visit = await a_visit(both)
    await at_code_time(both)
    both.ctx.clock.set(START + dt.timedelta(hours=3))
    await close_expired_windows(both.ctx)  # never verified at the clinic
    digest = await build_digest(both.ctx, both.people.clinic.id, START.date(), with_rows=True)
    [row] = [r for r in digest.rows if r.visit_id == visit.id]
    assert row.state == "unverified" and row.code_delivery == expected
    assert digest.to_csv().splitlines()[0].endswith(",code_delivery")
    assert digest.to_csv().splitlines()[1].endswith("," + expected)
    i18n = make_i18n()
    with i18n.context(), i18n.use_locale("ru"):
        text, _ = texts.digest_messages(digest)
        csv = texts.digest_csv(digest).decode("utf-8-sig")
    flagged = "не подтверждён, хотя код дошёл до пациента"
    assert (flagged in text) is (expected == "delivered")
    assert ("доставлен пациенту" if expected == "delivered" else "отправлен, доставка неизвестна") in csv
