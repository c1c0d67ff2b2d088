"""Patients, doctors and admins talking to the real aiogram Bot, which talks HTTP to the Bot API stand-in."""
from __future__ import annotations

import datetime as dt
import json
import re

import pytest
from sqlalchemy import select

from bot.scheduling import close_windows_job
from core.codes import CodeOutcome
from core.db import tables as t
from core.model import Actor, VerificationMethod, VisitState
from core.services.codes import verify_code
from tests.bot.support import User, buttons, callback_answers, last_to, link, markup_of, say_not_there, texts_to, visit

CODE = re.compile(r"<code>(\d{6})</code>")
T = {  # a few words that prove which language a message is in
    "kk": {"privacy": "«Растау» боты не сақтайды", "linked": "сіз қосылдыңыз", "code": "Бір реттік кодыңыз",
           "instead": "Суретке түскіңіз келмесе", "ask": "дәрігердің қабылдауында болдыңыз ба", "yes": "Иә, болды",
           "no": "Жоқ, болған жоқ", "thanks": "Рақмет, жауабыңыз жазылды", "why": "Қаласаңыз, не болғанын",
           "passed": "түсініктемеңіз жауабыңызға қосылды", "visits": "(2 ішінен 1–2)", "again": "бұрын жазылған",
           "confirmed": "сіз растадыңыз", "disputed": "сіз болмағаныңызды айттыңыз"},
    "ru": {"privacy": "Что хранит бот «Растау»", "linked": "вы подключены", "code": "Ваш одноразовый код",
           "instead": "Если не хотите фотографироваться", "ask": "Вы были у врача", "yes": "Да, приём был",
           "no": "Нет, приёма не было", "thanks": "Спасибо, ваш ответ записан", "why": "Если хотите, опишите",
           "passed": "пояснение добавлено", "visits": "Ваши приёмы, сначала новые (1–2 из 2)",
           "again": "уже записан", "confirmed": "вы подтвердили", "disputed": "вас там не было"},
}


async def state_of(ctx, visit_id) -> VisitState:
    async with ctx.uow() as uow:
        return (await uow.visits.get(visit_id)).state


@pytest.mark.parametrize("lang", ["kk", "ru"])
async def test_full_patient_journey(ctx, clinic_world, world, standin, lang):
    w, words = clinic_world, T[lang]
    patient = w.p1 if lang == "kk" else w.p2
    other = "ru" if lang == "kk" else "kk"
    user = User(7000 + patient.id, language_code=other)  # Telegram's hint is the other language; the choice wins
    admin = User(9000)
    await link(world, admin, w.admin.phone.lstrip("+"), "ru")

    await world.send(user, "/start")
    greeting = last_to(standin, user.id)
    assert "Сәлеметсіз бе" in greeting.text and "Здравствуйте" in greeting.text
    assert [b[1] for b in buttons(markup_of(greeting))] == [f"lang:{other}", f"lang:{lang}"]
    assert buttons(markup_of(greeting))[0][0].startswith("✓"), "Telegram's language preselects"
    await world.press(user, f"lang:{lang}")
    notice = last_to(standin, user.id)
    assert words["privacy"] in notice.text and buttons(markup_of(notice))[0][1] == "contact"
    await world.share_contact(user, patient.phone)
    assert words["linked"] in last_to(standin, user.id).text

    # the code arrives 10 minutes before the start, in the patient's language, with the "instead of a photo" line
    first = await visit(ctx, w, patient, 30)
    await world.deliver()
    assert not CODE.search(last_to(standin, user.id).text), "too early for the code"
    ctx.clock.advance(dt.timedelta(minutes=20))
    await world.deliver()
    message = last_to(standin, user.id).text
    assert words["code"] in message and words["instead"] in message and "09:30" in message
    code = CODE.search(message).group(1)
    assert (await verify_code(ctx, w.clinic.id, first.id, code)).outcome is CodeOutcome.VERIFIED

    # an hour after the end: "were you there?" → yes
    ctx.clock.advance(dt.timedelta(minutes=30 + 60))
    await close_windows_job(ctx)
    await world.deliver()
    prompt = last_to(standin, user.id)
    assert words["ask"] in prompt.text and w.clinic.name in prompt.text and w.doctor.full_name in prompt.text
    assert [b[1] for b in buttons(markup_of(prompt))] == [f"ans:yes:{first.id}", f"ans:no:{first.id}"]
    assert words["yes"] in buttons(markup_of(prompt))[0][0] and words["no"] in buttons(markup_of(prompt))[1][0]
    await world.press(user, f"ans:yes:{first.id}", text=prompt.text)
    assert words["thanks"] in last_to(standin, user.id).text
    assert await state_of(ctx, first.id) is VisitState.PATIENT_CONFIRMED
    await world.press(user, f"ans:yes:{first.id}")
    assert words["again"] in callback_answers(standin)[-1], "a second press is acknowledged and changes nothing"

    # a visit that never happened: "I wasn't there" + a reason; the admin hears at once, then the reason
    second = await visit(ctx, w, patient, 5)
    ctx.clock.advance(dt.timedelta(hours=2))
    await close_windows_job(ctx)
    await world.deliver()
    await say_not_there(world, user, second.id)
    assert words["why"] in last_to(standin, user.id).text
    assert await state_of(ctx, second.id) is VisitState.PATIENT_DISPUTED
    await world.deliver()
    notice = last_to(standin, admin.id).text
    assert f"№{second.id}" in notice and "********" + patient.iin[-4:] in notice and patient.iin not in notice
    reason = "Мен ол күні жұмыста болдым / я был на работе 🙂"
    await world.send(user, reason)
    assert words["passed"] in last_to(standin, user.id).text
    await world.deliver()
    assert "Мен ол күні жұмыста болдым" in last_to(standin, admin.id).text
    async with ctx.uow() as uow:
        assert (await uow.visits.get(second.id)).dispute_reason == reason

    # /visits: both, newest first, with their status; the confirmed one can still be disputed (48 h)
    await world.send(user, "/visits")
    listing = last_to(standin, user.id)
    assert words["visits"] in listing.text
    assert listing.text.index(words["disputed"]) < listing.text.index(words["confirmed"])
    assert [b[1] for b in buttons(markup_of(listing))] == [f"vl:open:0:{first.id}"]
    assert patient.iin not in "".join(texts_to(standin, user.id))


async def test_contact_of_someone_else_is_refused(ctx, clinic_world, world, standin):
    user = User(7101)
    await world.send(user, "/start")
    await world.press(user, "lang:ru")
    await world.share_contact(user, clinic_world.p2.phone, owner_id=555)
    assert "Это не ваш контакт" in last_to(standin, user.id).text
    async with ctx.uow() as uow:
        assert (await uow.patients.get(clinic_world.p2.id)).chat_id is None


@pytest.mark.parametrize("phone", ["77770001122", "+79161234567"])
async def test_unregistered_phone_is_told_to_ask_the_clinic(ctx, clinic_world, world, standin, phone):
    user = User(7102)
    await world.send(user, "/start")
    await world.press(user, "lang:kk")
    await world.share_contact(user, phone)
    text = last_to(standin, user.id).text
    assert "тіркелмеген" in text and "тіркеуді сұраңыз" in text


async def test_doctor_sends_a_code_for_an_online_consultation(ctx, clinic_world, world, standin):
    w = clinic_world
    doctor, patient_user = User(7201), User(7202)
    await link(world, doctor, w.doctor.phone, "ru")
    await link(world, patient_user, w.p2.phone, "ru")
    online = await visit(ctx, w, w.p2, 5, mode="online")
    await visit(ctx, w, w.p2, 60)  # in person: not listed

    await world.send(patient_user, "/code")
    assert "только врачам" in last_to(standin, patient_user.id).text
    await world.press(patient_user, f"code:{online.id}")
    assert "только врачам" in callback_answers(standin)[-1]

    await world.send(doctor, "/code")
    menu = last_to(standin, doctor.id)
    assert [b[1] for b in buttons(markup_of(menu))] == [f"code:{online.id}"]
    assert "Ivan P." in buttons(markup_of(menu))[0][0]
    await world.press(doctor, f"code:{online.id}")
    assert callback_answers(standin)[-1] == "Отправлено пациенту."
    await world.deliver()
    message = last_to(standin, patient_user.id).text
    assert "онлайн-консультация" in message
    code = CODE.search(message).group(1)
    assert not any(code in text for text in texts_to(standin, doctor.id)), "the doctor never sees the code"
    assert (await verify_code(ctx, w.clinic.id, online.id, code)).outcome is CodeOutcome.VERIFIED


async def test_forged_callback_for_another_patients_visit_changes_nothing(ctx, clinic_world, world, standin):
    w = clinic_world
    mine, theirs = User(7301), User(7302)
    await link(world, mine, w.p1.phone, "kk")
    other_visit = await visit(ctx, w, w.p2, -60)
    for data in (f"ans:no:{other_visit.id}", f"ans:yes:{other_visit.id}", f"ans:dispute:{other_visit.id}",
                 "ans:no:999999"):
        await world.press(mine, data)
        assert "сіздің қабылдауларыңыздың арасында жоқ" in callback_answers(standin)[-1]
    await world.press(theirs, f"ans:no:{other_visit.id}")  # not linked at all
    assert "/start" in callback_answers(standin)[-1]
    assert await state_of(ctx, other_visit.id) is VisitState.SCHEDULED
    async with ctx.uow() as uow:
        assert await uow.outbox.pending(kind="dispute_notice") == []


async def test_stop_unlinks_and_silences(ctx, clinic_world, world, standin):
    user = User(7401)
    await link(world, user, clinic_world.p1.phone, "kk")
    await world.send(user, "/stop")
    assert "ажыратылдыңыз" in last_to(standin, user.id).text
    before = len(standin.messages_to(user.id))
    v = await visit(ctx, clinic_world, clinic_world.p1, 5)
    ctx.clock.advance(dt.timedelta(hours=3))
    await close_windows_job(ctx)
    await world.deliver()
    assert len(standin.messages_to(user.id)) == before
    async with ctx.uow() as uow:
        assert (await uow.patients.get(clinic_world.p1.id)).chat_id is None
        statuses = {r.kind: r.status for r in (await uow.conn.execute(
            select(t.outbox.c.kind, t.outbox.c.status).where(t.outbox.c.visit_id == v.id))).all()}
    assert statuses == {"visit_code": "skipped", "attendance_prompt": "skipped"}


async def test_cancelled_visit_gets_no_prompt(ctx, clinic_world, world, standin):
    from core.services.visits import cancel_visit
    user = User(7501)
    await link(world, user, clinic_world.p2.phone, "ru")
    v = await visit(ctx, clinic_world, clinic_world.p2, 60)
    await cancel_visit(ctx, clinic_world.clinic.id, v.id)
    before = len(standin.messages_to(user.id))
    ctx.clock.advance(dt.timedelta(hours=3))
    await world.deliver()
    assert len(standin.messages_to(user.id)) == before


async def test_language_can_be_changed_later_and_scheduled_messages_follow_it(ctx, clinic_world, world, standin):
    user = User(7601, language_code="ru")
    await link(world, user, clinic_world.p2.phone, "ru")
    await world.send(user, "/language")
    await world.press(user, "lang:kk")
    assert "қазақ тілінде" in last_to(standin, user.id).text
    async with ctx.uow() as uow:
        assert (await uow.patients.get(clinic_world.p2.id)).language.value == "kk"
    await visit(ctx, clinic_world, clinic_world.p2, 5)
    await world.deliver()
    assert "Бір реттік кодыңыз" in last_to(standin, user.id).text
    await world.send(user, "/help")
    assert "Пациенттерге" in last_to(standin, user.id).text


async def test_a_patient_who_writes_again_is_reachable_again(ctx, clinic_world, world, standin):
    user = User(7701)
    await link(world, user, clinic_world.p2.phone, "ru")
    async with ctx.uow() as uow:
        await uow.patients.mark_chat_blocked(user.id)  # a 403 earlier: they had blocked the bot
        await uow.commit()
    await world.send(user, "/help")
    async with ctx.uow() as uow:
        assert (await uow.patients.get(clinic_world.p2.id)).chat_blocked is False


async def test_a_button_pressed_counts_as_writing_again_but_a_repeated_update_does_not(ctx, clinic_world, world,
                                                                                      standin):
    """Any update from the user unblocks (not only messages), once: Telegram's redelivery of an update from before
    the block must not unblock a chat that blocked the bot since."""
    user = User(7708)
    await link(world, user, clinic_world.p2.phone, "ru")
    pressed = await world.press(user, "lang:ru")
    async with ctx.uow() as uow:
        await uow.patients.mark_chat_blocked(user.id)
        await uow.commit()
    await world.feed(json.loads(json.dumps(pressed)))
    async with ctx.uow() as uow:
        assert (await uow.patients.get(clinic_world.p2.id)).chat_blocked is True
    await world.press(user, "lang:ru")
    async with ctx.uow() as uow:
        assert (await uow.patients.get(clinic_world.p2.id)).chat_blocked is False


async def test_visits_offers_one_button_per_visit_still_open_to_an_answer_on_every_page(ctx, clinic_world, world,
                                                                                         standin):
    """/visits: one button per visit that can still get an answer (not a column of identical ❌), on pages that
    reach every such visit, even one older than the 30 days listed (issue 17)."""
    from core.services.visits import patient_confirms
    w = clinic_world
    user = User(7702)
    await link(world, user, w.p2.phone, "ru")
    ancient = await visit(ctx, w, w.p2, -45 * 24 * 60)  # never answered: still open to an answer
    old = await visit(ctx, w, w.p2, -20 * 24 * 60)
    recent = [await visit(ctx, w, w.p2, -10 * 24 * 60 + i * 60) for i in range(16)]
    async with ctx.uow() as uow:
        v = await uow.visits.get(old.id, lock=True)
        v.verify(VerificationMethod.FACE, Actor.DOCTOR, ctx.clock.now() - dt.timedelta(days=20))
        await uow.visits.save(v)
        await uow.commit()
    ctx.clock.advance(dt.timedelta(days=-19))
    await patient_confirms(ctx, old.id, [w.p2.id])  # answered 19 days ago: final now
    ctx.clock.advance(dt.timedelta(days=19))
    await close_windows_job(ctx)
    upcoming = await visit(ctx, w, w.p2, 120)
    await world.send(user, "/visits")
    listing = last_to(standin, user.id)
    assert "Ваши приёмы, сначала новые (1–8 из 19)" in listing.text and "запланирован" in listing.text
    opened, page, seen = set(), listing, 0
    while True:
        data = [b[1] for b in buttons(markup_of(page))]
        opened |= {int(d.split(":")[-1]) for d in data if d.startswith("vl:open:")}
        older = [d for d in data if d.startswith("vl:page:") and int(d.split(":")[2]) > seen]
        if not older:
            break
        seen = int(older[0].split(":")[2])
        await world.press(user, older[0], message_id=listing.message_id, text=page.text)
        page = last_to(standin, user.id)
        assert page.message_id == listing.message_id, "paging edits the list in place"
    assert opened == {ancient.id, *(r.id for r in recent)}, "every visit open to an answer, and only those"
    assert seen == 2 and upcoming.id not in opened and old.id not in opened
