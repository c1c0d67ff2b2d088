"""SMS (issue 14): the real dispatcher and renderer sending over HTTP to the SMS gateway stand-in, fallback from a
patient who blocked the Telegram bot, no_channel, the daily cap, and the real inbound webhook over HTTP (signed,
replays and forgeries change nothing). The texts' segment counts in kk and ru."""
from __future__ import annotations

import datetime as dt
import json
import re

import pytest
import sqlalchemy as sa
from aiohttp import web

from bot.channels import sms_texts
from bot.channels.sms import SmsChannel, count_segments
from bot.channels.sms_webhook import SmsWebhook
from bot.delivery.dispatcher import OutboxDispatcher
from bot.delivery.limits import SendPacer
from bot.i18n import make_i18n
from bot.rendering import OutboxRenderer
from core.channels import ChannelName
from core.config import Settings
from core.db import tables as t
from core.db.uow import UnitOfWorkFactory
from core.model import OutboxKind, OutboxMessage, Recipient, VisitState
from core.services import Context
from core.services.visits import register_visit
from devkit.botapi import BotApiStandIn
from devkit.sms_gateway import SmsGatewayStandIn
from tests.bot.dispatch_support import TOKEN, FastTime, make_bot
from tests.bot.support import close_bot
from tests.conftest import test_settings as make_settings

SECRET = "inbound-secret-for-tests-0123456789"
I18N = make_i18n()


@pytest.fixture
async def gateway():
    g = SmsGatewayStandIn()
    await g.start()
    yield g
    await g.stop()


@pytest.fixture
async def telegram():
    api = BotApiStandIn()
    api.add_bot(TOKEN, "rastau_test_bot")
    await api.start()
    yield api
    await api.stop()


def sms_settings(db_url: str, gateway: SmsGatewayStandIn, **overrides) -> Settings:
    values = dict(sms_gateway_url=gateway.base_url, sms_login=gateway.login, sms_password=gateway.password,
                  sms_inbound_secret=SECRET)
    values.update(overrides)
    return make_settings(db_url, **values)


@pytest.fixture
def sms_ctx(engine, db_url, gateway, clock):
    return Context.build(sms_settings(db_url, gateway), UnitOfWorkFactory(engine), clock)


class Rig:
    """The bot's sending side as bot/__main__.py wires it with SMS on, its pace (SMS: one a second per patient) on
    FastTime shared by the dispatcher and the channel."""

    def __init__(self, ctx: Context, telegram: BotApiStandIn):
        self.ctx = ctx
        self.bot = make_bot(telegram.base_url)
        fast = FastTime(10)
        self.sms = SmsChannel(ctx, I18N, pacer=SendPacer(ctx.settings.sms_rate, 1.0, fast))
        enabled = frozenset({ChannelName.TELEGRAM, ChannelName.SMS})
        self.dispatcher = OutboxDispatcher(ctx, self.bot, OutboxRenderer(ctx, I18N, channels=enabled),
                                           worker_id="w1", pacer=SendPacer(1000, 1000, fast),
                                           channels={ChannelName.SMS: self.sms})

    async def close(self) -> None:
        await close_bot(self.bot)
        await self.sms.close()


@pytest.fixture
async def rig(sms_ctx, telegram):
    r = Rig(sms_ctx, telegram)
    yield r
    await r.close()


async def visit_and_row(ctx, world, patient, kind: OutboxKind, *, minutes: int = 5) -> tuple[int, int]:
    visit = await register_visit(ctx, clinic_id=world.clinic.id, doctor_id=world.doctor.id, patient_id=patient.id,
                                 start=ctx.clock.now() + dt.timedelta(minutes=minutes),
                                 duration=dt.timedelta(minutes=15), mode="in_person", service_code="A01")
    # the visit queued its own code and question (core.services.visits): keep the one under test, due now
    now = ctx.clock.now()
    o = t.outbox
    async with ctx.uow() as uow:
        await uow.conn.execute(sa.update(o).where(o.c.visit_id == visit.id, o.c.kind != kind.value)
                               .values(status="skipped"))
        await uow.conn.execute(sa.update(o).where(o.c.visit_id == visit.id, o.c.kind == kind.value).values(due_at=now))
        row = (await uow.conn.execute(sa.select(o.c.id).where(o.c.visit_id == visit.id, o.c.kind == kind.value)
                                      )).scalar_one_or_none()
        if row is None:
            row = await uow.outbox.add(OutboxMessage(kind=kind, recipient_kind=Recipient.PATIENT,
                                                     recipient_id=patient.id, visit_id=visit.id, due_at=now,
                                                     payload={}), now)
        await uow.commit()
    assert row is not None
    return visit.id, row


async def outbox_row(ctx, row_id: int):
    async with ctx.uow(read_only=True) as uow:
        return await uow.outbox.get(row_id)


async def channel_rows(ctx, patient_id: int) -> dict[str, object]:
    async with ctx.uow(read_only=True) as uow:
        return {r.channel: r for r in await uow.channels.for_patient(patient_id)}


@pytest.fixture
async def sms_world(sms_ctx):
    from core.services import registry
    from tests.conftest import VALID_IINS
    clinic = await registry.create_clinic(sms_ctx, "Emhana No. 5")
    doctor = await registry.add_doctor(sms_ctx, clinic.id, "Aidos Seitkali", "8 (701) 111-22-33")
    p1 = (await registry.upsert_patient(sms_ctx, clinic.id, VALID_IINS[0], "Asel N.", "87011234567", "kk")).patient
    p2 = (await registry.upsert_patient(sms_ctx, clinic.id, VALID_IINS[1], "Ivan P.", "+7 705 765 43 21",
                                        "ru")).patient
    return type("World", (), dict(clinic=clinic, doctor=doctor, p1=p1, p2=p2))


# --- the texts ------------------------------------------------------------------------------------------------------

def test_segments_are_counted_as_gateways_bill_them():
    assert count_segments("a" * 160).count == 1 and count_segments("a" * 161).count == 2
    assert count_segments("a" * 306).count == 2 and count_segments("a" * 307).count == 3
    assert count_segments("{" * 80).count == 1 and count_segments("{" * 81).count == 2  # extension: two septets
    assert count_segments("ә" * 70).count == 1 and count_segments("ә" * 71).count == 2
    assert count_segments("я" * 134).count == 2 and count_segments("я" * 135).count == 3
    assert count_segments("Hi 😀").encoding == "ucs2" and count_segments("😀" * 35).count == 1  # surrogate pairs


@pytest.mark.parametrize("locale", ["kk", "ru"])
def test_every_sms_template_fits_one_segment_in_each_language(locale):
    latest = dt.datetime(2026, 12, 31, 18, 59, tzinfo=dt.UTC)  # 31.12, 23:59 in Almaty: the widest values
    with I18N.context(), I18N.use_locale(locale):
        code = sms_texts.code_sms("999999", latest)
        question = sms_texts.question_sms(latest)
        short_contact = sms_texts.question_sms_no_reply(latest, "+7 727 000 00 00")  # 16: a phone or short link
        long_contact = sms_texts.question_sms_no_reply(latest, "https://rastau.example.kz/dispute/abcdef")  # 40
    assert re.search(r"[А-Яа-яӘәҚқҢңӨөҰұҮүІі]", code + question), "worded in the patient's language"
    assert "999999" in code and "31.12" in code and "23:59" in code
    assert "1" in question and "0" in question
    assert [count_segments(t).count for t in (code, question, short_contact)] == [1, 1, 1], (code, question,
                                                                                            short_contact)
    assert count_segments(long_contact).count == 2, "a long contact costs a second segment: counted, not cut"


# --- sending --------------------------------------------------------------------------------------------------------

async def test_a_patient_with_no_messenger_gets_the_code_by_sms_once(rig, sms_world, gateway):
    visit_id, row_id = await visit_and_row(rig.ctx, sms_world, sms_world.p2, OutboxKind.VISIT_CODE)
    await rig.dispatcher.drain()
    await rig.dispatcher.drain()
    sent = gateway.to("+77057654321")
    assert len(sent) == 1 and sent[0].sender == "Rastau"
    assert re.search(r"Код \d{6} на приём", sent[0].text), sent[0].text
    row = await outbox_row(rig.ctx, row_id)
    assert (row.status, row.channel, row.channel_message_id) == ("sent", "sms", sent[0].id)
    async with rig.ctx.uow(read_only=True) as uow:
        assert await uow.codes.current(visit_id) is not None, "the code that went out is the visit's code"


async def test_a_patient_who_blocked_the_bot_is_reached_by_sms(rig, sms_world, gateway, telegram):
    async with rig.ctx.uow() as uow:
        await uow.patients.set_chat(sms_world.p1.phone, 7001)
        await uow.commit()
    telegram.block_user(7001)
    _visit_id, row_id = await visit_and_row(rig.ctx, sms_world, sms_world.p1, OutboxKind.ATTENDANCE_PROMPT)
    await rig.dispatcher.drain()
    assert telegram.messages_to(7001) == [], "Telegram refused it: the patient blocked the bot"
    sent = gateway.to("+77011234567")
    assert len(sent) == 1 and "дәрігерде болдыңыз ба" in sent[0].text, "in the patient's language (kk)"
    row = await outbox_row(rig.ctx, row_id)
    assert (row.status, row.channel) == ("sent", "sms")
    assert row.channel_note == "telegram: blocked the bot", "why Telegram was skipped is on the outbox row"
    tg = (await channel_rows(rig.ctx, sms_world.p1.id))["telegram"]
    assert tg.gone_at is not None and tg.gone_reason == "blocked the bot", "and on the patient's channel row"
    _second_visit, second = await visit_and_row(rig.ctx, sms_world, sms_world.p1, OutboxKind.ATTENDANCE_PROMPT)
    await rig.dispatcher.drain()
    assert telegram.requests_to(7001) == 1, "the next message does not try the blocked chat again"
    assert (await outbox_row(rig.ctx, second)).channel == "sms" and len(gateway.to("+77011234567")) == 2


async def test_a_linked_patient_still_gets_telegram_and_no_sms(rig, sms_world, gateway, telegram):
    async with rig.ctx.uow() as uow:
        await uow.patients.set_chat(sms_world.p2.phone, 7002)
        await uow.commit()
    _visit_id, row_id = await visit_and_row(rig.ctx, sms_world, sms_world.p2, OutboxKind.ATTENDANCE_PROMPT)
    await rig.dispatcher.drain()
    assert len(telegram.messages_to(7002)) == 1 and gateway.sent == []
    assert (await outbox_row(rig.ctx, row_id)).status == "sent"


async def test_an_invalid_number_leaves_no_channel_and_says_why(rig, sms_world, gateway):
    gateway.invalid_numbers.add("+77057654321")
    _visit_id, row_id = await visit_and_row(rig.ctx, sms_world, sms_world.p2, OutboxKind.ATTENDANCE_PROMPT)
    await rig.dispatcher.drain()
    row = await outbox_row(rig.ctx, row_id)
    assert row.status == "skipped" and row.last_error.startswith("no_channel")
    assert row.channel_note == "sms: sms gateway: invalid_number"
    assert (await channel_rows(rig.ctx, sms_world.p2.id))["sms"].gone_reason == "sms gateway: invalid_number"
    assert gateway.sent == []


async def test_gateway_errors_and_timeouts_are_retried_without_a_duplicate(rig, sms_world, gateway):
    gateway.fail_next(1, "500")
    gateway.fail_next(1, "429")
    _visit_id, row_id = await visit_and_row(rig.ctx, sms_world, sms_world.p2, OutboxKind.ATTENDANCE_PROMPT)
    for _ in range(3):
        await rig.dispatcher.drain()
        rig.ctx.clock.advance(dt.timedelta(seconds=30))
    assert [o for _to, o in gateway.attempts] == ["500", "429", "ok"]
    assert len(gateway.sent) == 1 and (await outbox_row(rig.ctx, row_id)).status == "sent"
    async with rig.ctx.uow(read_only=True) as uow:
        used = (await uow.conn.execute(sa.select(t.sms_daily_usage.c.sent))).scalar_one()
    assert used == 1, "sends the gateway did not take are not counted against the clinic's cap"


async def test_the_daily_cap_stops_sending_warns_first_and_records_why(engine, db_url, gateway, clock, telegram,
                                                                       caplog):
    ctx = Context.build(sms_settings(db_url, gateway, sms_daily_cap=2, sms_warn_share=0.5), UnitOfWorkFactory(engine),
                        clock)
    from core.services import registry
    from tests.conftest import VALID_IINS
    clinic = await registry.create_clinic(ctx, "Emhana No. 5")
    doctor = await registry.add_doctor(ctx, clinic.id, "Aidos Seitkali", "8 (701) 111-22-33")
    patient = (await registry.upsert_patient(ctx, clinic.id, VALID_IINS[0], "Asel N.", "87011234567", "ru")).patient
    world = type("W", (), dict(clinic=clinic, doctor=doctor))
    rows = [(await visit_and_row(ctx, world, patient, OutboxKind.ATTENDANCE_PROMPT, minutes=m))[1] for m in (1, 2, 3)]
    rig = Rig(ctx, telegram)
    try:
        await rig.dispatcher.drain()
    finally:
        await rig.close()
    got = {r: (await outbox_row(ctx, r)) for r in rows}
    assert sorted(row.status for row in got.values()) == ["failed", "sent", "sent"]
    refused = next(row for row in got.values() if row.status == "failed")
    assert "daily SMS cap (2) is reached" in refused.last_error and refused.channel == "sms"
    assert len(gateway.sent) == 2
    async with ctx.uow(read_only=True) as uow:
        usage = (await uow.conn.execute(sa.select(t.sms_daily_usage))).one()
    assert usage.sent == 2 and usage.warned_at is not None, "the operator was warned at half the cap"


# --- inbound ---------------------------------------------------------------------------------------------------------

@pytest.fixture
async def inbound(sms_ctx):
    app = web.Application()
    SmsWebhook(sms_ctx).register(app, "/sms/inbound")
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/sms/inbound"
    await runner.cleanup()


async def visit_state(ctx, visit_id: int) -> VisitState:
    async with ctx.uow(read_only=True) as uow:
        return (await uow.visits.get(visit_id)).state


async def test_a_reply_0_disputes_the_visit_asked_by_sms_and_a_replay_changes_nothing(rig, sms_world, gateway,
                                                                                    inbound):
    now = int(rig.ctx.clock.now().timestamp())
    visit_id, _row = await visit_and_row(rig.ctx, sms_world, sms_world.p2, OutboxKind.ATTENDANCE_PROMPT)
    await rig.dispatcher.drain()
    assert "Ответьте 1" in gateway.to("+77057654321")[0].text
    status, body = await gateway.reply(inbound, SECRET, "+77057654321", " 0 ", message_id="in-1", timestamp=now)
    assert status == 200 and json.loads(body)["outcome"] == "recorded"
    assert await visit_state(rig.ctx, visit_id) is VisitState.PATIENT_DISPUTED
    async with rig.ctx.uow(read_only=True) as uow:
        notices = len(await uow.outbox.pending(kind=OutboxKind.DISPUTE_NOTICE))
        events = (await uow.conn.execute(sa.select(t.visit_events).where(t.visit_events.c.visit_id == visit_id)
                                         .order_by(t.visit_events.c.id))).all()
    assert (events[-1].step, events[-1].method, events[-1].actor) == ("answer_channel", "sms", "patient"), \
        "the timeline says the answer came by SMS"
    status, body = await gateway.reply(inbound, SECRET, "+77057654321", " 0 ", message_id="in-1", timestamp=now)
    assert status == 200 and json.loads(body)["outcome"] == "replay"
    async with rig.ctx.uow(read_only=True) as uow:
        assert len(await uow.outbox.pending(kind=OutboxKind.DISPUTE_NOTICE)) == notices


async def test_a_reply_1_records_the_patients_word(rig, sms_world, gateway, inbound):
    visit_id, _row = await visit_and_row(rig.ctx, sms_world, sms_world.p2, OutboxKind.ATTENDANCE_PROMPT)
    await rig.dispatcher.drain()
    async with rig.ctx.uow() as uow:  # the visit was billed without evidence: "1" is kept as the patient's claim
        visit = await uow.visits.get(visit_id, lock=True)
        visit.close_unverified(rig.ctx.clock.now() + dt.timedelta(hours=2))
        await uow.visits.save(visit)
        await uow.commit()
    now = int(rig.ctx.clock.now().timestamp())
    status, body = await gateway.reply(inbound, SECRET, "87057654321", "1", timestamp=now)
    assert status == 200 and json.loads(body)["outcome"] == "recorded"
    async with rig.ctx.uow(read_only=True) as uow:
        assert (await uow.visits.get(visit_id)).attended_claim_at is not None


@pytest.mark.parametrize("forgery", ["no signature", "wrong secret", "stale", "body changed"])
async def test_a_forged_inbound_sms_changes_nothing(rig, sms_world, gateway, inbound, forgery):
    visit_id, _row = await visit_and_row(rig.ctx, sms_world, sms_world.p2, OutboxKind.ATTENDANCE_PROMPT)
    await rig.dispatcher.drain()
    now = int(rig.ctx.clock.now().timestamp())
    body = json.dumps({"id": "forged-1", "from": "+77057654321", "text": "0"}).encode()
    headers = gateway.signed(SECRET, body, now)
    if forgery == "no signature":
        headers.pop("X-Rastau-Signature")
    elif forgery == "wrong secret":
        headers = gateway.signed("not-the-secret-at-all-000000", body, now)
    elif forgery == "stale":
        headers = gateway.signed(SECRET, body, now - 3600)
    else:
        body = body.replace(b"+77057654321", b"+77011234567")
    status, _text = await gateway.post(inbound, body, headers)
    assert status == 401
    assert await visit_state(rig.ctx, visit_id) is VisitState.SCHEDULED
    async with rig.ctx.uow(read_only=True) as uow:
        assert (await uow.conn.execute(sa.select(sa.func.count()).select_from(t.inbound_messages))).scalar() == 0


async def test_a_reply_from_a_phone_never_asked_changes_nothing(rig, sms_world, gateway, inbound):
    visit_id, _row = await visit_and_row(rig.ctx, sms_world, sms_world.p2, OutboxKind.ATTENDANCE_PROMPT)
    now = int(rig.ctx.clock.now().timestamp())  # not dispatched: nobody was asked by SMS yet
    status, body = await gateway.reply(inbound, SECRET, "+77057654321", "0", timestamp=now)
    assert status == 200 and json.loads(body)["outcome"] == "nothing_asked"
    status, body = await gateway.reply(inbound, SECRET, "+77770000000", "0", timestamp=now)
    assert status == 200 and json.loads(body)["outcome"] == "unknown_sender"
    assert await visit_state(rig.ctx, visit_id) is VisitState.SCHEDULED


async def test_delivery_reports_are_recorded_on_the_outbox_row(rig, sms_world, gateway, inbound):
    _visit_id, row_id = await visit_and_row(rig.ctx, sms_world, sms_world.p2, OutboxKind.ATTENDANCE_PROMPT)
    await rig.dispatcher.drain()
    now = int(rig.ctx.clock.now().timestamp())
    status, _ = await gateway.report(inbound + "/report", SECRET, gateway.sent[0].id, "delivered", timestamp=now)
    assert status == 200
    assert (await outbox_row(rig.ctx, row_id)).delivery_status == "delivered"
    status, _ = await gateway.report(inbound + "/report", "wrong-secret-wrong-secret", gateway.sent[0].id, "failed",
                                     timestamp=now)
    assert status == 401 and (await outbox_row(rig.ctx, row_id)).delivery_status == "delivered"


# --- settings ---------------------------------------------------------------------------------------------------------

def test_sms_refuses_to_start_without_its_secrets(db_url):
    with pytest.raises(ValueError, match="RASTAU_SMS_LOGIN, RASTAU_SMS_PASSWORD"):
        make_settings(db_url, sms_gateway_url="http://127.0.0.1:1")
    with pytest.raises(ValueError, match="RASTAU_SMS_DISPUTE_CONTACT"):
        make_settings(db_url, sms_gateway_url="http://127.0.0.1:1", sms_login="a", sms_password="b")
    with pytest.raises(ValueError, match="too short"):
        make_settings(db_url, sms_gateway_url="http://127.0.0.1:1", sms_login="a", sms_password="b",
                      sms_inbound_secret="short")
    assert not make_settings(db_url).sms_enabled


# --- no_channel: "no answer" and "no way to ask" are never confused ------------------------------------------------

async def digest_answers(ctx, world) -> tuple[dict[int, str], dict[str, int]]:
    from core.services.digest import build_digest
    digest = await build_digest(ctx, world.clinic.id, ctx.clock.now().date())
    return {r.visit_id: r.answer for r in digest.rows}, digest.totals


async def test_a_visit_whose_patient_has_no_channel_reads_no_channel(ctx, clinic_world):
    """Telegram only (SMS and WhatsApp off): the patient with a linked chat has no answer yet; the one without has
    no way to be asked, in the digest, its CSV and chat text, and the auditors' export."""
    w = clinic_world
    async with ctx.uow() as uow:
        await uow.patients.set_chat(w.p1.phone, 9101)
        await uow.commit()
    asked, unasked = [(await register_visit(ctx, clinic_id=w.clinic.id, doctor_id=w.doctor.id, patient_id=p.id,
                                            start=ctx.clock.now() + dt.timedelta(minutes=5),
                                            duration=dt.timedelta(minutes=15), mode="in_person",
                                            service_code="A01")).id for p in (w.p1, w.p2)]
    answers, totals = await digest_answers(ctx, w)
    assert answers == {asked: "none", unasked: "no_channel"}
    assert totals["no_answer"] == 2 and totals["no_channel"] == 1
    from core.services.digest import build_digest
    digest = await build_digest(ctx, w.clinic.id, ctx.clock.now().date())
    from bot import texts
    with I18N.context(), I18N.use_locale("ru"):
        text, _with_csv = texts.digest_messages(digest)
        table = texts.digest_csv(digest).decode("utf-8-sig")
    assert "из них спросить было негде (пациенту не доходят ни чат, ни WhatsApp, ни SMS): 1" in text
    assert "спросить было негде (нет рабочего канала)" in table and "нет ответа" in table
    assert "no_channel" in digest.to_csv()
    async with ctx.uow(read_only=True) as uow:
        start = ctx.clock.now() - dt.timedelta(days=1)
        rows = {r.id: bool(r.reachable) for r in await uow.queries.evidence_page(
            None, start, start + dt.timedelta(days=2), after=0, limit=10)}
    assert rows == {asked: True, unasked: False}, "the auditors' export says no_channel by the same rule"


async def test_with_sms_on_a_registered_phone_is_a_channel_until_it_fails(sms_ctx, sms_world):
    from core.services.channels import record_gone
    visit = await register_visit(sms_ctx, clinic_id=sms_world.clinic.id, doctor_id=sms_world.doctor.id,
                                 patient_id=sms_world.p2.id, start=sms_ctx.clock.now() + dt.timedelta(minutes=5),
                                 duration=dt.timedelta(minutes=15), mode="in_person", service_code="A01")
    answers, _totals = await digest_answers(sms_ctx, sms_world)
    assert answers[visit.id] == "none", "SMS can ask: no answer yet, not no_channel"
    await record_gone(sms_ctx, sms_world.p2.id, ChannelName.SMS, "+77057654321", "sms gateway: invalid_number")
    answers, totals = await digest_answers(sms_ctx, sms_world)
    assert answers[visit.id] == "no_channel" and totals["no_channel"] == 1
    from core.services import registry
    await registry.upsert_patient(sms_ctx, sms_world.clinic.id, sms_world.p2.iin, sms_world.p2.full_name,
                                  "+7 705 000 11 22", "ru")
    answers, _totals = await digest_answers(sms_ctx, sms_world)
    assert answers[visit.id] == "none", "a new phone is a new SMS channel"


async def test_a_doctor_can_request_a_code_for_a_patient_reached_only_by_sms(rig, sms_world, gateway):
    """An online consultation: the clinic asks for a code for a patient with no messenger; it goes by SMS (with SMS
    off the same request is refused as patient_unreachable, tests/server/test_code_requests.py)."""
    from core.services.codes import request_code
    visit = await register_visit(rig.ctx, clinic_id=sms_world.clinic.id, doctor_id=sms_world.doctor.id,
                                 patient_id=sms_world.p2.id, start=rig.ctx.clock.now() + dt.timedelta(minutes=2),
                                 duration=dt.timedelta(minutes=15), mode="online", service_code="A01")
    async with rig.ctx.uow() as uow:  # the scheduled code went out already: only the requested one is under test
        await uow.conn.execute(sa.update(t.outbox).where(t.outbox.c.visit_id == visit.id).values(status="skipped"))
        await uow.commit()
    requested = await request_code(rig.ctx, sms_world.clinic.id, visit.id)
    assert requested.channel == "sms"
    await rig.dispatcher.drain()
    sent = gateway.to("+77057654321")
    assert len(sent) == 1 and re.search(r"Код \d{6}", sent[0].text)
