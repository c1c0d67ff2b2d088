"""Patient-change notices (a face enrolled or replaced, the phone moved, consent recorded) reach a patient who has no
Telegram (issue 14): on WhatsApp (free text inside the 24-hour window, the notice template outside it) and by SMS
(one short segment saying how to object), through the real dispatcher and senders against the stand-ins. A clinic
that changes the face or the phone of a patient without Telegram can no longer do it unseen."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from bot.app import create_bot
from bot.channels import change_texts
from bot.channels.sms import SmsChannel, count_segments
from bot.delivery.dispatcher import OutboxDispatcher
from bot.i18n import make_i18n
from bot.rendering import OutboxRenderer
from core.channels import ChannelName
from core.clock import ALMATY
from core.db import tables as t
from core.model import OutboxKind
from core.services import registry
from devkit.botapi import BotApiStandIn
from devkit.sms_gateway import SmsGatewayStandIn
from tests.bot.support import close_bot
from tests.channels.test_whatsapp import linked
from tests.channels.whatsapp_support import start_world, wa_id
from tests.conftest import VALID_IINS

CONTACT = "+77272000000"  # RASTAU_SMS_DISPUTE_CONTACT: where a patient objects when there is no button
ASEL_PHONE, BOLAT_PHONE, NEW_PHONE = "+77011234567", "+77029876543", "+77770001122"
ASEL = wa_id(ASEL_PHONE)
NOW = dt.datetime(2026, 11, 25, 10, 0, tzinfo=ALMATY)


@pytest.fixture
async def world(db_url, engine, clock):
    gateway = SmsGatewayStandIn()
    await gateway.start()
    clock.set(NOW)
    world, stop = await start_world(db_url, engine, clock, sms_gateway_url=gateway.base_url,
                                    sms_login=gateway.login, sms_password=gateway.password,
                                    sms_dispute_contact=CONTACT)
    telegram = BotApiStandIn()
    await telegram.start()
    bot = create_bot("555000:change-notices", telegram.base_url, timeout=5)
    i18n = make_i18n()
    sms = SmsChannel(world.ctx, i18n, pacer=world.pacer(world.ctx.settings.sms_rate, 1.0))
    renderer = OutboxRenderer(world.ctx, i18n, channels=frozenset(ChannelName))
    world.dispatcher = OutboxDispatcher(world.ctx, bot, renderer, worker_id="changes", pacer=world.pacer(),
                                        channels={ChannelName.WHATSAPP: world.channel, ChannelName.SMS: sms})
    world.telegram, world.gateway = telegram, gateway
    clinic = await registry.create_clinic(world.ctx, "Emhana No. 5")
    asel = (await registry.upsert_patient(world.ctx, clinic.id, VALID_IINS[0], "Asel N.", ASEL_PHONE, "ru")).patient
    bolat = (await registry.upsert_patient(world.ctx, clinic.id, VALID_IINS[1], "Bolat K.", BOLAT_PHONE,
                                           "kk")).patient
    world.api.add_user(ASEL)  # Asel has WhatsApp; Bolat has no messenger at all
    world.clinic, world.asel, world.bolat = clinic, asel, bolat
    yield world
    await sms.close()
    await close_bot(bot)
    await telegram.stop()
    await stop()
    await gateway.stop()


async def deliver(world) -> None:
    for _ in range(3):
        await world.dispatcher.drain()
        await world.settle()


async def notice_rows(world) -> list:
    async with world.ctx.uow() as uow:
        return list((await uow.conn.execute(select(t.outbox).where(t.outbox.c.kind == OutboxKind.CHANGE_NOTICE.value)
                                            .order_by(t.outbox.c.id))).all())


async def test_whatsapp_only_and_sms_only_patients_each_hear_of_changes_to_their_record(world):
    await linked(world, ASEL)  # her message opens the 24-hour window
    linked_messages = len(world.api.messages_to(ASEL))

    for patient in (world.asel, world.bolat):
        await registry.record_consent(world.ctx, world.clinic.id, patient.id, "front desk")
    await deliver(world)
    rows = await notice_rows(world)
    assert [(r.recipient_id, r.status, r.channel) for r in rows] == [
        (world.asel.id, "sent", "whatsapp"), (world.bolat.id, "sent", "sms")]

    told = world.api.messages_to(ASEL)[linked_messages:]
    assert [m.type for m in told] == ["text"], "inside her window: free text"
    assert "согласие" in told[0].text and "Emhana No. 5" in told[0].text
    assert told[0].text.endswith(f"Не вы? {CONTACT}"), "and how to object, since WhatsApp has no button here"
    sms = world.gateway.to(BOLAT_PHONE)
    assert [m.text for m in sms] == [f"25.11: бетті тануға келісіміңіз тіркелді. Сіз емес пе? {CONTACT}"]
    assert count_segments(sms[0].text).count == 1, "one SMS segment, in Kazakh as Bolat chose"

    # a day later the clinic moves both patients to a number it controls
    world.ctx.clock.advance(dt.timedelta(hours=25))
    await registry.upsert_patient(world.ctx, world.clinic.id, VALID_IINS[0], "Asel N.", NEW_PHONE, "ru")
    await registry.upsert_patient(world.ctx, world.clinic.id, VALID_IINS[1], "Bolat K.", "+77770003344", "kk")
    await deliver(world)
    rows = await notice_rows(world)
    assert [(r.status, r.channel) for r in rows[2:]] == [("sent", "whatsapp"), ("sent", "sms")]
    template = world.api.messages_to(ASEL)[-1]
    settings = world.ctx.settings
    assert template.template == (settings.whatsapp_notice_template, settings.whatsapp_language_ru), \
        "outside the window the notice goes as the notice template"
    assert "1122" in template.text and CONTACT in template.text
    assert world.api.messages_to(wa_id(NEW_PHONE)) == []
    assert [m.text for m in world.gateway.to(BOLAT_PHONE)][1:] == [
        f"26.11: нөміріңіз ...3344 болып өзгерді. Сіз емес пе? {CONTACT}"], "to the old number, not the new one"
    assert world.gateway.to("+77770003344") == [] and world.gateway.to(NEW_PHONE) == []
    assert world.telegram.sent == [], "nobody here has Telegram"


async def test_a_patient_with_no_channel_at_all_is_recorded_as_such(world, db_url, engine, clock):
    """SMS off, no WhatsApp: the notice cannot go anywhere, and the outbox says so rather than "sent"."""
    world.api.users.discard(ASEL)
    await registry.record_consent(world.ctx, world.clinic.id, world.asel.id, "front desk")
    renderer = OutboxRenderer(world.ctx, make_i18n(), channels=frozenset({ChannelName.TELEGRAM}))
    dispatcher = OutboxDispatcher(world.ctx, world.dispatcher._bot, renderer, worker_id="tg-only",
                                  rate_global=1000, rate_per_chat=1000)
    await dispatcher.drain()
    [row] = await notice_rows(world)
    assert (row.status, (row.last_error or "").split(":")[0]) == ("skipped", "no_channel")


@pytest.mark.parametrize("locale", ["kk", "ru"])
def test_each_change_sms_fits_one_segment_with_a_phone_to_object_to(locale):
    i18n = make_i18n()
    at = dt.datetime(2026, 12, 31, 18, 59, tzinfo=dt.UTC)
    with i18n.context(), i18n.use_locale(locale):
        texts = {kind: change_texts.change_sms(kind=kind, at=at, phone_tail="9999", contact=CONTACT)
                 for kind in change_texts.SMS_WHAT}
    assert all(text and CONTACT in text for text in texts.values())
    too_long = {kind: count_segments(text).units for kind, text in texts.items() if text
                and count_segments(text).count > 1}
    assert not too_long


async def test_a_notice_the_telegram_chat_blocked_goes_on_whatsapp_once(world):
    """The chat named when the change was made blocked the bot: the notice is not lost, it goes on WhatsApp."""
    async with world.ctx.uow() as uow:
        await uow.patients.set_chat(ASEL_PHONE, 5550001)
        await uow.commit()
    world.telegram.block_user(5550001)
    await linked(world, ASEL)
    before = len(world.api.messages_to(ASEL))
    await registry.record_consent(world.ctx, world.clinic.id, world.asel.id, "front desk")
    await deliver(world)
    [row] = await notice_rows(world)
    assert (row.status, row.channel, row.channel_note) == ("sent", "whatsapp", "telegram: blocked the bot")
    assert world.telegram.requests_to(5550001) == 1
    assert len(world.api.messages_to(ASEL)) == before + 1
