"""The patient hears of every change to what identifies them (face, phone, consent) and can answer "this wasn't
me": the real aiogram Bot against the Bot API stand-in, in Kazakh and Russian."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from core.db import tables as t
from core.services import registry
from core.services.access import Caller
from tests.bot.support import User, buttons, callback_answers, last_to, link, markup_of
from tests.conftest import patient_change_rows

KEY = Caller("key:0a1b2c3d4e5f")
FACE_A, FACE_B = tuple([1.0] + [0.0] * 127), tuple([0.0, 1.0] + [0.0] * 126)
WORDS = {
    "kk": {"consent": "келісіміңіз тіркелді", "enrolled": "фотосуретіңіз сақталды",
           "replaced": "жаңасына ауыстырылды", "revoked": "фотосуретіңіз өшірілді",
           "phone": "телефон нөмірі ауыстырылды", "ask": "Егер мұны сіз сұрамаған болсаңыз",
           "button": "Мен сұраған жоқпын", "recorded": "Жазылды: сіз мұны сұрамағансыз",
           "admin": "өзгерісті СҰРАМАҒАНЫН айтады", "again": "бұрын жазылған",
           "not_yours": "сіз туралы емес", "digest": "Пациенттер өздері сұрамаған дейтін өзгерістер",
           "replaced_short": "бет суреті ауыстырылды", "when": "2026 жылғы 25 қараша"},
    "ru": {"consent": "Записано ваше согласие", "enrolled": "сохранена ваша фотография",
           "replaced": "заменена на новую", "revoked": "фотография для распознавания лица удалена",
           "phone": "сменили номер телефона", "ask": "Если вы об этом не просили",
           "button": "Это не я", "recorded": "Записано: вы об этом не просили",
           "admin": "НЕ запрашивал изменение", "again": "уже записан",
           "not_yours": "не о вас", "digest": "Изменения, о которых пациенты не просили",
           "replaced_short": "заменено фото лица", "when": "25 ноября 2026"},
}


async def admin_notices(ctx) -> int:
    async with ctx.uow(read_only=True) as uow:
        return (await uow.conn.execute(select(func.count()).select_from(t.outbox).where(
            t.outbox.c.kind == "change_dispute_notice"))).scalar_one()


@pytest.mark.parametrize("lang", ["kk", "ru"])
async def test_a_replaced_face_reaches_the_patient_who_disputes_it_and_the_admin_hears_at_once(
        ctx, clinic_world, world, standin, lang):
    w, words = clinic_world, WORDS[lang]
    user, admin = User(7300), User(9300)
    await link(world, admin, w.admin.phone.lstrip("+"), lang)
    await link(world, user, w.p1.phone, lang)

    await registry.record_consent(ctx, w.clinic.id, w.p1.id, "Nurse Dana", caller=KEY)
    await registry.enrol_face(ctx, w.clinic.id, w.p1.id, [FACE_A], caller=KEY)
    ctx.clock.advance(dt.timedelta(hours=3))
    await registry.enrol_face(ctx, w.clinic.id, w.p1.id, [FACE_B], caller=KEY)
    await world.deliver()

    made = await patient_change_rows(ctx, w.p1.id)
    by_change = {data: m for m in standin.messages_to(user.id) for _text, data in buttons(markup_of(m))
                 if data.startswith("chg:")}
    assert sorted(by_change) == sorted(f"chg:{c.id}" for c in made), "one notice per change"
    for change, what in zip(made, ("consent", "enrolled", "replaced")):
        message = by_change[f"chg:{change.id}"]
        assert words[what] in message.text and words["ask"] in message.text, message.text
        assert w.clinic.name in message.text and words["when"] in message.text
        assert buttons(markup_of(message)) == [(f"🚫 {words['button']}", f"chg:{change.id}")]
    replaced = by_change[f"chg:{made[2].id}"]
    assert "12:00" in replaced.text, "the time of the change, in Almaty"

    await world.press(user, f"chg:{made[2].id}", message_id=replaced.message_id, text=replaced.text)
    assert words["recorded"] in last_to(standin, user.id).text
    disputed = (await patient_change_rows(ctx, w.p1.id))[2]
    assert disputed.disputed_at == ctx.clock.now()
    await world.deliver()
    notice = last_to(standin, admin.id).text
    assert words["admin"] in notice and words["replaced_short"] in notice, notice
    assert "key:0a1b2c3d4e5f" in notice and "********" + w.p1.iin[-4:] in notice and w.p1.iin not in notice

    await world.press(user, f"chg:{made[2].id}")
    assert words["again"] in callback_answers(standin)[-1]
    assert (await patient_change_rows(ctx, w.p1.id))[2].disputed_at == disputed.disputed_at, \
        "a second press changes nothing"
    assert await admin_notices(ctx) == 1

    await world.send(admin, "/digest 25.11.2026")
    digest = "\n".join(m.text or "" for m in standin.messages_to(admin.id)[-2:])
    assert words["digest"] in digest and f"#{made[2].id}" in digest and "key:0a1b2c3d4e5f" in digest, digest


async def test_a_forged_button_for_another_patients_change_changes_nothing(ctx, clinic_world, world, standin):
    w = clinic_world
    victim, other = User(7310), User(7311)
    await link(world, victim, w.p1.phone, "ru")
    await link(world, other, w.p2.phone, "ru")
    await registry.record_consent(ctx, w.clinic.id, w.p1.id, "Nurse", caller=KEY)
    change = (await patient_change_rows(ctx, w.p1.id))[0]

    for data in (f"chg:{change.id}", "chg:999999", "chg:-1", "chg:x"):
        await world.press(other, data)
    answers = callback_answers(standin)[-4:]
    assert all("не о вас" in (answer or "") for answer in answers[:3]), answers  # "chg:x" is no button of ours
    assert (await patient_change_rows(ctx, w.p1.id))[0].disputed_at is None
    assert await admin_notices(ctx) == 0


async def test_a_phone_change_is_told_to_the_old_chat_which_may_still_dispute_it(ctx, clinic_world, world,
                                                                                 standin):
    w = clinic_world
    user, admin = User(7320), User(9320)
    await link(world, admin, w.admin.phone, "kk")
    await link(world, user, w.p1.phone, "kk")
    result = await registry.upsert_patient(ctx, w.clinic.id, w.p1.iin, w.p1.full_name, "+7 707 999 12 34", "kk",
                                           caller=KEY)
    assert result.patient.chat_id is None, "the new number must be proven in the chat again"
    await world.deliver()
    notice = last_to(standin, user.id)
    assert WORDS["kk"]["phone"] in notice.text and "1234" in notice.text and "999" not in notice.text
    change = (await patient_change_rows(ctx, w.p1.id))[0]
    assert change.kind == "phone_changed"

    await world.press(user, f"chg:{change.id}", message_id=notice.message_id, text=notice.text)
    assert WORDS["kk"]["recorded"] in last_to(standin, user.id).text
    assert (await patient_change_rows(ctx, w.p1.id))[0].disputed_at is not None
    await world.deliver()
    assert WORDS["kk"]["admin"] in last_to(standin, admin.id).text
