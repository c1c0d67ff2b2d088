"""Fallback across all three channels (issue 14), each with its real sender over HTTP against its stand-in (Bot API,
WhatsApp Cloud API, SMS gateway) and the real dispatcher: a patient who blocked the Telegram bot is reached on
WhatsApp; once WhatsApp turns out to have no account for the number, by SMS; each message reaches them once."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from bot.app import create_bot
from bot.channels.sms import SmsChannel
from bot.delivery.dispatcher import OutboxDispatcher
from bot.i18n import make_i18n
from bot.rendering import OutboxRenderer
from core.channels import ChannelName
from core.clock import ALMATY
from core.db import tables as t
from core.services import registry
from core.services.visits import register_visit
from devkit.botapi import BotApiStandIn
from devkit.sms_gateway import SmsGatewayStandIn
from tests.bot.support import close_bot
from tests.channels.test_whatsapp import linked
from tests.channels.whatsapp_support import start_world, wa_id
from tests.conftest import VALID_IINS

PHONE = "+77011234567"
ASEL = wa_id(PHONE)
TELEGRAM_CHAT = 5550002
START = dt.datetime(2026, 11, 25, 11, 0, tzinfo=ALMATY)


@pytest.fixture
async def three(db_url, engine, clock):
    gateway = SmsGatewayStandIn()
    await gateway.start()
    world, stop = await start_world(db_url, engine, clock, sms_gateway_url=gateway.base_url,
                                    sms_login=gateway.login, sms_password=gateway.password,
                                    sms_dispute_contact="+7 727 000 00 00")
    telegram = BotApiStandIn()
    await telegram.start()
    bot = create_bot("555000:three-channels", telegram.base_url, timeout=5)
    i18n = make_i18n()
    sms = SmsChannel(world.ctx, i18n, pacer=world.pacer(world.ctx.settings.sms_rate, 1.0))
    renderer = OutboxRenderer(world.ctx, i18n, channels=frozenset(ChannelName))
    world.dispatcher = OutboxDispatcher(world.ctx, bot, renderer, worker_id="three", pacer=world.pacer(),
                                        channels={ChannelName.WHATSAPP: world.channel, ChannelName.SMS: sms})
    world.telegram, world.gateway = telegram, gateway
    clinic = await registry.create_clinic(world.ctx, "Emhana No. 5")
    doctor = await registry.add_doctor(world.ctx, clinic.id, "Aidos Seitkali", "8 (701) 111-22-33")
    asel = (await registry.upsert_patient(world.ctx, clinic.id, VALID_IINS[0], "Asel N.", "87011234567",
                                          "ru")).patient
    world.api.add_user(ASEL)
    world.people = type("People", (), dict(clinic=clinic, doctor=doctor, asel=asel))
    yield world
    await sms.close()
    await close_bot(bot)
    await telegram.stop()
    await stop()
    await gateway.stop()


async def visit_at(world, start: dt.datetime) -> int:
    visit = await register_visit(world.ctx, clinic_id=world.people.clinic.id, doctor_id=world.people.doctor.id,
                                 patient_id=world.people.asel.id, start=start, duration=dt.timedelta(minutes=15),
                                 mode="in_person", service_code="A01")
    return visit.id


async def code_row(world, visit_id: int):
    async with world.ctx.uow() as uow:
        return (await uow.conn.execute(select(t.outbox).where(t.outbox.c.visit_id == visit_id,
                                                              t.outbox.c.kind == "visit_code"))).one()


async def deliver(world) -> None:
    for _ in range(3):
        await world.dispatcher.drain()
        await world.settle()


async def test_blocked_on_telegram_reached_on_whatsapp_then_by_sms_once_each(three):
    async with three.ctx.uow() as uow:
        await uow.patients.set_chat(PHONE, TELEGRAM_CHAT)
        await uow.commit()
    three.telegram.block_user(TELEGRAM_CHAT)
    await linked(three, ASEL)
    before = len(three.api.messages_to(ASEL))

    first = await visit_at(three, START)
    three.ctx.clock.set(START - dt.timedelta(minutes=10))
    await deliver(three)
    row = await code_row(three, first)
    assert (row.status, row.channel, row.channel_note) == ("sent", "whatsapp", "telegram: blocked the bot")
    assert three.telegram.messages_to(TELEGRAM_CHAT) == []
    assert len(three.api.messages_to(ASEL)) == before + 1, "the code reached WhatsApp once"
    assert three.gateway.sent == [], "and no SMS was paid for"

    three.api.users.discard(ASEL)  # the number no longer has WhatsApp: the next message fails with 131026
    second = await visit_at(three, START + dt.timedelta(hours=2))
    three.ctx.clock.set(START + dt.timedelta(hours=2) - dt.timedelta(minutes=10))
    await deliver(three)
    row = await code_row(three, second)
    assert (row.status, row.channel) == ("sent", "sms"), row
    codes = [m.text for m in three.gateway.to(PHONE) if m.text.startswith("Код")]
    assert len(codes) == 1 and "13:00" in codes[0], "the second code once, by SMS"
    questions = [m.text for m in three.gateway.to(PHONE) if not m.text.startswith("Код")]
    assert questions == ["На вас записан приём 25.11 в 11:00. Если вас не было: +7 727 000 00 00"], \
        "the first visit's question, due meanwhile, went by SMS too, saying how to dispute (no inbound here)"
    async with three.ctx.uow() as uow:
        channels = {r.channel: r for r in await uow.channels.for_patient(three.people.asel.id)}
    assert channels["telegram"].gone_reason == "blocked the bot"
    assert channels["whatsapp"].gone_at is not None
    assert three.telegram.requests_to(TELEGRAM_CHAT) == 1, "Telegram was tried once, for the first message only"
