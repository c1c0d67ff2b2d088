"""WhatsApp (issue 14) against the Cloud API stand-in, over HTTP both ways: the webhook's handshake and signature
check, linking by wa_id, the language choice, answers by signed buttons, delivery statuses on the outbox row, the
24-hour window, and the API's error codes."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import math

import aiohttp
import pytest
from aiohttp import web
from pydantic import ValidationError
from sqlalchemy import select

from bot.channels.base import (
    Address,
    AttendanceQuestion,
    ChannelGone,
    ChannelName,
    ChannelRefused,
    ChannelRetry,
    CodeMessage,
    InboundMessage,
    Notice,
)
from bot.channels.whatsapp import LANGUAGE_BUTTONS, SURE_TEXT, WhatsAppInbox, WhatsAppRuntime
from bot.i18n import make_i18n
from core.clock import ALMATY
from core.db import tables as t
from core.model import VisitState
from core.services import registry
from core.services.visits import register_visit
from core.services.whatsapp import button_payload
from devkit.whatsapp import signature
from tests.channels.whatsapp_support import VERIFY_TOKEN, hours, start_world, wa_id
from tests.conftest import VALID_IINS
from tests.conftest import test_settings as make_settings

ASEL_PHONE = "+77011234567"
ASEL = wa_id(ASEL_PHONE)
IVAN = wa_id("+77057654321")
STRANGER = "77079990000"


@pytest.fixture
async def wa(db_url, engine, clock):
    world, stop = await start_world(db_url, engine, clock)
    yield world
    await stop()


@pytest.fixture
async def people(wa):
    clinic = await registry.create_clinic(wa.ctx, "Emhana No. 5")
    doctor = await registry.add_doctor(wa.ctx, clinic.id, "Aidos Seitkali", "8 (701) 111-22-33")
    asel = (await registry.upsert_patient(wa.ctx, clinic.id, VALID_IINS[0], "Asel N.", "87011234567", "ru")).patient
    ivan = (await registry.upsert_patient(wa.ctx, clinic.id, VALID_IINS[1], "Ivan P.", "+7 705 765 43 21",
                                          "ru")).patient
    for number in (ASEL, IVAN):
        wa.api.add_user(number)
    return type("People", (), dict(clinic=clinic, doctor=doctor, asel=asel, ivan=ivan))


async def visit_of(wa, people, patient):
    return await register_visit(wa.ctx, clinic_id=people.clinic.id, doctor_id=people.doctor.id,
                                patient_id=patient.id, start=dt.datetime(2026, 11, 25, 11, 0, tzinfo=ALMATY),
                                duration=dt.timedelta(minutes=15), mode="in_person", service_code="A01")


async def linked(wa, number: str, language: str = "ru") -> None:
    """The patient writes, is linked, and picks a language."""
    await wa.api.user_writes(number, "Сәлем")
    await wa.settle()
    choice = wa.api.messages_to(number)[-1]
    await wa.api.user_taps(number, choice, f"lang:{language}")
    await wa.settle()


async def visit_state(wa, visit_id: int) -> VisitState:
    async with wa.ctx.uow() as uow:
        return (await uow.visits.get(visit_id)).state


# --- the webhook -------------------------------------------------------------------------------------------------

async def test_handshake_echoes_the_challenge_only_for_the_verify_token(wa):
    async with aiohttp.ClientSession() as http:
        ok = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
        async with http.get(wa.webhook_url, params=ok) as response:
            assert (response.status, await response.text()) == (200, "1158201444")
        for wrong in ({**ok, "hub.verify_token": "guess"}, {**ok, "hub.mode": "unsubscribe"},
                      {"hub.challenge": "1"}):
            async with http.get(wa.webhook_url, params=wrong) as response:
                assert response.status == 403
                assert "1158201444" not in await response.text()


async def test_a_forged_webhook_changes_nothing(wa, people):
    """Bad, missing, wrongly keyed or stale signatures: 401 before parsing, nothing queued, nobody linked."""
    body = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",
            "value": {"metadata": {"phone_number_id": wa.api.phone_number_id},
                      "messages": [{"from": ASEL, "id": "wamid.FORGED", "timestamp": "1", "type": "text",
                                    "text": {"body": "hi"}}]}}]}]}).encode()
    good = signature(wa.api.app_secret, body)
    attempts = [
        dict(header=""),  # no signature at all
        dict(header="sha256=" + "0" * 64),
        dict(header=good.replace("sha256=", "sha1=")),
        dict(sign_with="not-the-app-secret"),
    ]
    for attempt in attempts:
        assert await wa.api.post_webhook(body, **attempt) == 401
    tampered = body.replace(b'"hi"', b'"ho"')
    assert await wa.api.post_webhook(tampered, header=good) == 401  # signed once, then edited
    assert await wa.api.post_webhook(b"{not json", header="") == 401  # unsigned garbage is refused before parsing
    await wa.settle()
    assert await wa.queued() == 0
    assert await wa.channel_row(people.asel.id) is None
    assert wa.api.messages_to(ASEL) == []
    assert await wa.api.post_webhook(body) == 200  # the same body, signed with the app secret, is taken
    assert await wa.queued() == 1


async def test_messages_to_another_business_number_of_the_same_app_link_nobody(wa, people):
    other = json.loads(json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{
        "field": "messages", "value": {"metadata": {"phone_number_id": "999"}, "messages": [{
            "from": ASEL, "id": "wamid.OTHER", "timestamp": "1", "type": "text", "text": {"body": "hi"}}]}}]}]}))
    assert await wa.api.post_webhook(other) == 200  # Meta's, so acknowledged; but not ours to act on
    await wa.settle()
    assert await wa.queued() == 0 and await wa.channel_row(people.asel.id) is None


async def test_the_webhook_answers_at_once_and_the_worker_does_the_work(wa, people):
    await wa.api.user_writes(ASEL, "Сәлем")  # answered 200 already
    assert wa.api.webhook_answers == [200]
    assert await wa.channel_row(people.asel.id) is None  # nothing done inside the request
    assert await wa.queued() == 1
    await wa.settle()
    assert (await wa.channel_row(people.asel.id)).address == ASEL


async def test_a_replayed_body_changes_nothing(wa, people):
    await linked(wa, ASEL)
    v = await visit_of(wa, people, people.asel)
    await wa.channel.ask_attendance(Address(ChannelName.WHATSAPP, ASEL, people.asel.id), AttendanceQuestion(
        v.id, "Emhana No. 5", "Aidos S.", v.start, False, "ru"), not_after=math.inf)
    await wa.settle()
    question = wa.api.messages_to(ASEL)[-1]
    await wa.api.user_taps(ASEL, question, question.button_payloads()[1])  # ❌: asked once more
    await wa.settle()
    confirm = wa.api.messages_to(ASEL)[-1]
    sure = confirm.button_payloads()[0]
    replies_before = len(wa.api.messages_to(ASEL))
    # capture the exact signed body of the tap, then send it again as an attacker (or Meta's retry) would
    bodies: list[bytes] = []
    original = wa.api.post_webhook

    async def recording(payload, **kwargs):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        bodies.append(body)
        return await original(body, **kwargs)

    wa.api.post_webhook = recording
    await wa.api.user_taps(ASEL, confirm, sure)
    wa.api.post_webhook = original
    await wa.settle()
    assert await visit_state(wa, v.id) is VisitState.PATIENT_DISPUTED
    replies = len(wa.api.messages_to(ASEL))
    assert replies == replies_before + 1
    for _ in range(3):
        assert await wa.api.post_webhook(bodies[0]) == 200  # Meta's retries get a 200 too
    await wa.settle()
    assert len(wa.api.messages_to(ASEL)) == replies  # handled once: no second reply
    async with wa.ctx.uow() as uow:
        events = [e.step for e in await uow.visits.events(v.id)]
    assert events.count("patient_dispute") == 1


# --- linking -----------------------------------------------------------------------------------------------------

async def test_a_registered_patient_is_linked_by_writing_and_chooses_the_language(wa, people):
    await wa.api.user_writes(ASEL, "Сәлем")
    await wa.settle()
    row = await wa.channel_row(people.asel.id)
    assert row.address == ASEL and row.gone_at is None and row.last_inbound_at == wa.ctx.clock.now()
    choice = wa.api.messages_to(ASEL)[-1]
    assert choice.type == "interactive"
    assert "WhatsApp-ыңыз қосылды" in choice.text and "Ваш WhatsApp подключён" in choice.text  # kk and ru
    assert choice.button_payloads() == ["lang:kk", "lang:ru"]
    assert await wa.channel_row(people.ivan.id) is None  # only the sender's own phone is linked
    await wa.api.user_taps(ASEL, choice, "lang:kk")
    await wa.settle()
    assert await wa.language(people.asel.id) == "kk"
    assert wa.api.messages_to(ASEL)[-1].text == "Жарайды, енді сізге қазақша жазамын."


async def test_an_unknown_number_gets_a_polite_answer_in_both_languages_and_nothing_is_linked(wa, people):
    await wa.api.user_writes(STRANGER, "Hello")
    await wa.settle()
    answer = wa.api.messages_to(STRANGER)
    assert len(answer) == 1 and answer[0].type == "text"
    assert "тіркелмеген" in answer[0].text and "не зарегистрирован" in answer[0].text
    for patient in (people.asel, people.ivan):
        assert await wa.channel_row(patient.id) is None


async def test_patient_ids_in_a_message_cannot_link_another_phone(wa, people):
    """Only the sender's wa_id counts: a message that names Ivan's phone in its text links nobody to it."""
    await wa.api.user_writes(STRANGER, "+7 705 765 43 21")
    await wa.settle()
    assert await wa.channel_row(people.ivan.id) is None


# --- answers -----------------------------------------------------------------------------------------------------

async def test_the_question_buttons_record_the_answer_through_the_visit_services(wa, people):
    await linked(wa, ASEL)
    v = await visit_of(wa, people, people.asel)
    sent = await wa.channel.ask_attendance(Address(ChannelName.WHATSAPP, ASEL, people.asel.id), AttendanceQuestion(
        v.id, "Emhana No. 5", "Aidos S.", v.start, False, "ru"), not_after=math.inf)
    question = wa.api.messages_to(ASEL)[-1]
    assert sent.message_id == question.wamid
    assert question.template == ("rastau_visit_check", "ru")
    assert "Emhana No. 5" in question.text and "25 ноября 2026, 11:00" in question.text
    yes, no = question.button_payloads()
    assert str(v.id) in yes and yes != no
    await wa.api.user_taps(ASEL, question, no, "Меня там не было")
    await wa.settle()
    confirm = wa.api.messages_to(ASEL)[-1]  # as in Telegram (issue 17): asked once more, nothing recorded yet
    assert await visit_state(wa, v.id) is VisitState.SCHEDULED
    assert confirm.type == "interactive" and "вас НЕ было на этом приёме?" in confirm.text
    assert "*25 ноября 2026, 11:00*" in confirm.text and "<b>" not in confirm.text  # WhatsApp's bold, not HTML
    await wa.api.user_taps(ASEL, confirm, confirm.button_payloads()[0])
    await wa.settle()
    assert await visit_state(wa, v.id) is VisitState.PATIENT_DISPUTED
    recorded = wa.api.messages_to(ASEL)[-1].text
    assert recorded.startswith("❌") and "напишите одним сообщением" in recorded
    await wa.api.user_writes(ASEL, "В тот день я был в Алматы")  # the reason, as its own message
    await wa.settle()
    async with wa.ctx.uow() as uow:
        assert (await uow.visits.get(v.id)).dispute_reason == "В тот день я был в Алматы"
    assert "объяснение" in wa.api.messages_to(ASEL)[-1].text or "Спасибо" in wa.api.messages_to(ASEL)[-1].text
    wa.ctx.clock.advance(dt.timedelta(minutes=wa.ctx.settings.dispute_reason_minutes + 1))
    await wa.api.user_writes(ASEL, "И ещё кое-что")  # too late to be a reason: only the help text
    await wa.settle()
    async with wa.ctx.uow() as uow:
        assert (await uow.visits.get(v.id)).dispute_reason == "В тот день я был в Алматы"


async def test_going_back_from_i_wasnt_there_records_nothing(wa, people):
    await linked(wa, ASEL)
    v = await visit_of(wa, people, people.asel)
    await wa.channel.ask_attendance(Address(ChannelName.WHATSAPP, ASEL, people.asel.id), AttendanceQuestion(
        v.id, "Emhana No. 5", "Aidos S.", v.start, False, "kk"), not_after=math.inf)
    question = wa.api.messages_to(ASEL)[-1]
    await wa.api.user_taps(ASEL, question, question.button_payloads()[1])
    await wa.settle()
    confirm = wa.api.messages_to(ASEL)[-1]
    titles = [b["reply"]["title"] for b in confirm.body["interactive"]["action"]["buttons"]]
    assert all(len(title) <= 20 for title in titles), titles  # WhatsApp refuses longer reply buttons
    await wa.api.user_taps(ASEL, confirm, confirm.button_payloads()[1])  # ↩ no, go back
    await wa.settle()
    assert await visit_state(wa, v.id) is VisitState.SCHEDULED
    assert wa.api.messages_to(ASEL)[-1].text == make_i18n().gettext("All right, nothing was recorded.", locale="ru")


@pytest.mark.parametrize("lang", ["kk", "ru"])
def test_whatsapp_reply_buttons_fit_in_20_characters(lang):
    i18n = make_i18n()
    for title in ("❌ " + i18n.gettext(SURE_TEXT, locale=lang), i18n.gettext("↩ No, go back", locale=lang),
                  *LANGUAGE_BUTTONS.values()):
        assert len(title) <= 20, title


async def test_a_forged_or_copied_button_answers_nothing(wa, people):
    await linked(wa, ASEL)
    await linked(wa, IVAN)
    asel_visit = await visit_of(wa, people, people.asel)
    ivan_visit = await visit_of(wa, people, people.ivan)
    await wa.channel.ask_attendance(Address(ChannelName.WHATSAPP, ASEL, people.asel.id), AttendanceQuestion(
        asel_visit.id, "Emhana No. 5", "Aidos S.", asel_visit.start, False, "ru"), not_after=math.inf)
    asel_question = wa.api.messages_to(ASEL)[-1]
    asel_no = asel_question.button_payloads()[1]
    ivan_last = wa.api.messages_to(IVAN)[-1]
    forged = [
        asel_no,  # Asel's own button pressed from Ivan's phone (copied payload)
        asel_no.replace(f":{asel_visit.id}:", f":{ivan_visit.id}:"),  # another visit under Asel's signature
        f"v1:{ivan_visit.id}:n:" + "0" * 24,  # a guessed signature
        button_payload(wa.ctx, ivan_visit.id, False, ASEL),  # a genuine payload, but signed for Asel
        button_payload(wa.ctx, ivan_visit.id, "x", ASEL),  # "yes, I really wasn't there", signed for Asel
        "v1:1:n", "lang:en",
    ]
    for payload in forged:
        await wa.api.user_taps(IVAN, ivan_last, payload)
    await wa.settle()
    assert await visit_state(wa, asel_visit.id) is VisitState.SCHEDULED
    assert await visit_state(wa, ivan_visit.id) is VisitState.SCHEDULED
    assert await wa.language(people.ivan.id) == "ru"
    refusal = make_i18n().gettext("This visit is not among your visits; nothing was changed.", locale="ru")
    assert [m.text for m in wa.api.messages_to(IVAN)[-len(forged):]] == [refusal] * len(forged)
    # and the channel's own parser agrees with the worker
    inbound = InboundMessage(ChannelName.WHATSAPP, IVAN, "wamid.x", button_payload=asel_no)
    assert wa.channel.parse_answer(inbound) is None
    assert wa.channel.parse_answer(InboundMessage(ChannelName.WHATSAPP, ASEL, "wamid.y",
                                                  button_payload=asel_no)) is None  # asks once more: not an answer
    sure = button_payload(wa.ctx, asel_visit.id, "x", ASEL)
    assert wa.channel.parse_answer(InboundMessage(ChannelName.WHATSAPP, ASEL, "wamid.z",
                                                  button_payload=sure)).visit_id == asel_visit.id


# --- sending -------------------------------------------------------------------------------------------------------

async def test_the_code_goes_as_the_authentication_template_with_a_copy_code_button(wa, people):
    await linked(wa, ASEL, "kk")
    v = await visit_of(wa, people, people.asel)
    code = CodeMessage(v.id, "483920", "Emhana No. 5", "Aidos S.", v.start, v.start + hours(1), False, "kk")
    wa.ctx.clock.advance(hours(30))  # outside the window: a template needs none
    await wa.channel.send_code(Address(ChannelName.WHATSAPP, ASEL, people.asel.id), code, not_after=math.inf)
    await wa.settle()
    sent = wa.api.messages_to(ASEL)[-1]
    assert sent.template == ("rastau_code", "kk")
    components = sent.body["template"]["components"]
    assert components[0]["parameters"][0]["text"] == "483920"
    assert components[1]["sub_type"] == "url" and components[1]["parameters"][0]["text"] == "483920"
    assert sent.status == "delivered"


async def test_the_template_language_codes_come_from_settings(db_url, engine, clock):
    world, stop = await start_world(db_url, engine, clock, whatsapp_language_kk="kk_KZ")
    try:
        world.api.add_user(ASEL)
        with pytest.raises(ChannelRefused):  # the stand-in knows kk, not kk_KZ: refused with 132001, not retried
            await world.channel.send_code(Address(ChannelName.WHATSAPP, ASEL, 1), CodeMessage(
                1, "111222", "C", "D", clock.now(), clock.now(), False, "kk"), not_after=math.inf)
        assert world.api.refused == [(ASEL, 132001)]
    finally:
        await stop()


async def test_notices_are_free_text_inside_the_window_and_a_template_outside(wa, people):
    await linked(wa, ASEL)
    to = Address(ChannelName.WHATSAPP, ASEL, people.asel.id)
    await wa.channel.send_notice(to, Notice("Приём перенесён\nна завтра.", "ru"), not_after=math.inf)
    assert wa.api.messages_to(ASEL)[-1].type == "text"
    wa.ctx.clock.advance(hours(23) + dt.timedelta(minutes=57))  # within 24 h, but inside our safety margin
    await wa.channel.send_notice(to, Notice("Приём перенесён\nна завтра.", "ru"), not_after=math.inf)
    notice = wa.api.messages_to(ASEL)[-1]
    assert notice.template == ("rastau_notice", "ru")
    assert notice.body["template"]["components"][0]["parameters"][0]["text"] == "Приём перенесён на завтра."
    await wa.settle()
    assert all(m.status != "failed" for m in wa.api.messages_to(ASEL))  # no 131047 anywhere


async def test_error_codes_become_retry_gone_or_refused(wa, people):
    to = Address(ChannelName.WHATSAPP, ASEL, people.asel.id)
    code = CodeMessage(1, "123456", "C", "D", wa.ctx.clock.now(), wa.ctx.clock.now(), False, "ru")
    expectations = [("130429", ChannelRetry), ("131056", ChannelRetry), ("500", ChannelRetry), ("drop", ChannelRetry),
                    ("190", ChannelRetry), ("132001", ChannelRefused)]
    for fault, raised in expectations:
        wa.api.fail_next(1, fault)
        with pytest.raises(raised) as caught:
            await wa.channel.send_code(to, code, not_after=math.inf)
        assert ASEL not in caught.value.reason and "123456" not in caught.value.reason  # no PII in what is stored
    wa.api.fail_next(1, "131056")
    with pytest.raises(ChannelRetry) as pair:
        await wa.channel.send_code(to, code, not_after=math.inf)
    assert pair.value.retry_after == 6.0
    with pytest.raises(ChannelGone):
        await wa.channel.send_code(Address(ChannelName.WHATSAPP, "not-a-number", None), code, not_after=math.inf)
    assert wa.api.sent == []  # nothing was delivered by any of them


# --- delivery statuses ------------------------------------------------------------------------------------------------

async def test_statuses_land_on_the_outbox_row_and_only_move_forward(wa, people):
    await linked(wa, ASEL)
    v = await visit_of(wa, people, people.asel)
    sent = await wa.channel.send_code(Address(ChannelName.WHATSAPP, ASEL, people.asel.id), CodeMessage(
        v.id, "654321", "C", "D", v.start, v.start, False, "ru"), not_after=math.inf)
    row_id = await wa.outbox_row_sent_as(sent.message_id, people.asel.id)
    await wa.settle()  # the stand-in pushes sent, then delivered
    row = await wa.outbox(row_id)
    assert (row.delivery_status, row.delivery_status_at) == ("delivered", wa.ctx.clock.now())
    message = wa.api.messages_to(ASEL)[-1]
    wa.ctx.clock.advance(dt.timedelta(minutes=3))
    await wa.api.read(message)
    await wa.settle()
    assert (await wa.outbox(row_id)).delivery_status == "read"
    # a late or replayed "sent" or "failed" cannot take it back
    for status in ("sent", "delivered", "failed"):
        message.status = "accepted"
        await wa.api._status(message, status, 131026 if status == "failed" else None)
    await wa.settle()
    row = await wa.outbox(row_id)
    assert row.delivery_status == "read" and row.status == "sent"
    assert (await wa.channel_row(people.asel.id)).gone_at is None


async def test_a_message_failed_for_the_window_is_sent_again_as_a_template(wa, people):
    """Meta accepts free text and fails it later with 131047 when the window has closed (our record said open):
    the row goes back to the queue and the window is taken as closed, so the next try is a template."""
    await linked(wa, ASEL)
    to = Address(ChannelName.WHATSAPP, ASEL, people.asel.id)
    wa.api._last_inbound.clear()  # Meta's view: the window closed (e.g. its clock ran ahead of ours)
    sent = await wa.channel.send_notice(to, Notice("Напоминание", "ru"), not_after=math.inf)
    assert wa.api.messages_to(ASEL)[-1].type == "text"
    row_id = await wa.outbox_row_sent_as(sent.message_id, people.asel.id)
    await wa.settle()
    row = await wa.outbox(row_id)
    assert (row.status, row.delivery_status) == ("pending", "failed")
    assert "131047" in row.channel_note
    await wa.channel.send_notice(to, Notice("Напоминание", "ru"), not_after=math.inf)
    assert wa.api.messages_to(ASEL)[-1].template == ("rastau_notice", "ru")


async def test_a_number_without_whatsapp_is_gone_and_its_message_goes_back_to_the_queue(wa, people):
    await linked(wa, ASEL)
    wa.api.users.discard(ASEL)  # the account was deleted since
    sent = await wa.channel.send_code(Address(ChannelName.WHATSAPP, ASEL, people.asel.id), CodeMessage(
        1, "777888", "C", "D", wa.ctx.clock.now(), wa.ctx.clock.now(), False, "ru"), not_after=math.inf)
    row_id = await wa.outbox_row_sent_as(sent.message_id, people.asel.id)
    await wa.settle()
    row = await wa.outbox(row_id)
    assert row.status == "pending" and "131026" in row.channel_note  # the dispatcher falls back with it
    channel = await wa.channel_row(people.asel.id)
    assert channel.gone_at is not None and "131026" in channel.gone_reason
    await wa.api.user_writes(ASEL, "Я снова здесь")  # writing again proves the channel again
    await wa.settle()
    assert (await wa.channel_row(people.asel.id)).gone_at is None


# --- settings -------------------------------------------------------------------------------------------------------

def test_whatsapp_refuses_to_start_without_its_secrets(db_url):
    base = dict(whatsapp_phone_number_id="1000001", whatsapp_access_token="t", whatsapp_app_secret="s",
                whatsapp_verify_token=VERIFY_TOKEN)
    assert make_settings(db_url, **base).whatsapp_enabled
    for missing in ("whatsapp_access_token", "whatsapp_app_secret", "whatsapp_verify_token"):
        with pytest.raises(ValidationError, match=missing.upper()):
            make_settings(db_url, **{**base, missing: ""})
    with pytest.raises(ValidationError, match="too short"):
        make_settings(db_url, **{**base, "whatsapp_verify_token": "short"})
    assert not make_settings(db_url).whatsapp_enabled


async def test_the_runtime_serves_the_webhook_on_the_telegram_app_and_its_worker_wakes_by_itself(wa, people):
    """How bot/__main__ runs it: the webhook mounted on the Telegram webhook app, the inbox worker as a task woken by
    each webhook (no explicit drain here)."""
    runtime = WhatsAppRuntime(wa.ctx, make_i18n())
    app = web.Application()
    runtime.mount(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    wa.api.webhook_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/whatsapp/webhook"
    runtime.channel.api = wa.channel.api  # the stand-in's address is in wa's settings already
    stop = asyncio.Event()
    runtime.start_worker(stop)
    try:
        await wa.api.user_writes(ASEL, "Сәлем")
        for _ in range(200):  # bounded wait for the worker: no timing is asserted
            if wa.api.messages_to(ASEL):
                break
            await asyncio.sleep(0.02)
        assert (await wa.channel_row(people.asel.id)).address == ASEL
        assert wa.api.messages_to(ASEL)[-1].type == "interactive"
    finally:
        stop.set()
        await runtime.close()
        await runner.cleanup()


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_two_bot_instances_handle_each_message_once(wa, people):
    """Two inbox workers (two bot instances) on one queue: each message is handled, and answered, once."""
    strangers = [f"7707999000{i}" for i in range(6)]
    for number in strangers:
        await wa.api.user_writes(number, "Hello")
    await wa.api.user_writes(ASEL, "Сәлем")
    second = WhatsAppInbox(wa.ctx, wa.channel)
    await asyncio.gather(wa.inbox.drain(), second.drain())
    await wa.settle()
    assert [len(wa.api.messages_to(n)) for n in strangers] == [1] * 6
    assert len(wa.api.messages_to(ASEL)) == 1  # one language choice, not two


async def test_a_phone_changed_in_the_records_does_not_move_a_working_whatsapp(wa, people):
    """A dishonest clinic changes the patient's phone to a number it holds and writes from it, to receive her codes
    and answer her questions itself: her working WhatsApp stays hers, the other number is told nothing, and the
    refusal is in the clinic's audit chain. Only once her own WhatsApp is gone (131026) can a new number take over."""
    await linked(wa, ASEL)
    await registry.upsert_patient(wa.ctx, people.clinic.id, VALID_IINS[0], "Asel N.", "+7 707 999 00 00", "ru")
    await wa.api.user_writes(STRANGER, "Сәлем")
    await wa.settle()
    assert (await wa.channel_row(people.asel.id)).address == ASEL
    assert wa.api.messages_to(STRANGER) == []
    async with wa.ctx.uow() as uow:
        actions = [r.action for r in (await uow.conn.execute(select(t.audit_log))).all()]
    assert "whatsapp.link_refused" in actions
    wa.api.users.discard(ASEL)  # her account is gone: WhatsApp fails the next message with 131026
    sent = await wa.channel.send_code(Address(ChannelName.WHATSAPP, ASEL, people.asel.id), CodeMessage(
        1, "777888", "C", "D", wa.ctx.clock.now(), wa.ctx.clock.now(), False, "ru"), not_after=math.inf)
    await wa.outbox_row_sent_as(sent.message_id, people.asel.id)
    await wa.settle()
    await wa.api.user_writes(STRANGER, "Сәлем")
    await wa.settle()
    assert (await wa.channel_row(people.asel.id)).address == STRANGER
