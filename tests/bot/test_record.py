"""/mydata, /withdraw and /unlink in the real aiogram Bot, over HTTP to the Bot API stand-in, in kk and ru
(issue 16)."""
from __future__ import annotations

import datetime as dt
import json
import random

import pytest

from core.services import registry
from tests.bot.support import User, buttons, callback_answers, last_to, link, markup_of, texts_to, visit
from tests.conftest import VALID_IINS

WORDS = {
    "kk": {"about": "«Растау» боты {name} туралы не сақтайды", "face": "суреттер саны: 2", "ask": "қайтарып аласыз ба",
           "kept": "ештеңе өзгерген жоқ", "done": "келісіміңіз қайтарылды", "unlink": "ажыратасыз ба",
           "unlinked": "чат ажыратылды", "told": "келісімін қайтарып алды", "destroyed": "жойылды"},
    "ru": {"about": "Что Растау хранит о человеке: {name}", "face": "фотографий: 2", "ask": "Отозвать согласие",
           "kept": "ничего не изменилось", "done": "согласие отозвано", "unlink": "Отключить этот чат",
           "unlinked": "чат отключён и забыт", "told": "отозвал(а) согласие", "destroyed": "уничтожено"},
}


def _encoding(seed):
    rng = random.Random(seed)
    return tuple(rng.uniform(-0.3, 0.3) for _ in range(128))


@pytest.mark.parametrize("lang", ["kk", "ru"])
async def test_a_family_sees_its_record_and_withdraws_then_unlinks(ctx, clinic_world, world, standin, lang):
    w, words = clinic_world, WORDS[lang]
    # a family phone: p1 and a child; p2 (same clinic) and a namesake of p1 at another clinic must never show
    child = (await registry.upsert_patient(ctx, w.clinic.id, VALID_IINS[2], "Dana N.", w.p1.phone, lang)).patient
    other = await registry.create_clinic(ctx, "Other clinic")
    namesake = (await registry.upsert_patient(ctx, other.id, VALID_IINS[3], w.p1.full_name,
                                              "+7 707 000 11 22")).patient
    for p, seed in ((w.p1, 1), (w.p2, 2), (namesake, 3)):
        await registry.record_consent(ctx, p.clinic_id, p.id, "nurse Dana")
        await registry.enrol_face(ctx, p.clinic_id, p.id, [_encoding(seed), _encoding(seed + 10)])
    await visit(ctx, w, w.p1, -120)
    user, admin = User(8100), User(9100)
    await link(world, admin, w.admin.phone.lstrip("+"), "ru")
    await link(world, user, w.p1.phone, lang)

    await world.send(user, "/mydata")
    shown = texts_to(standin, user.id)[-3:]
    assert words["about"].format(name=w.p1.full_name) in shown[0] and words["face"] in shown[0]
    assert words["about"].format(name=child.full_name) in shown[1] and w.clinic.name in shown[1]
    everything = "\n".join(shown)
    for stranger in (w.p2, namesake):
        assert stranger.phone not in everything
    assert "Other clinic" not in everything and w.p2.full_name not in everything
    assert [b[1] for b in buttons(markup_of(last_to(standin, user.id)))] == ["rec:json", "rec:csv"]

    await world.press(user, "rec:json")
    document = last_to(standin, user.id).document
    assert document is not None and document[0] == "rastau-mydata.json"
    copy = json.loads(document[1])
    assert sorted(p["patient_id"] for p in copy["patients"]) == sorted([w.p1.id, child.id])
    assert namesake.iin not in document[1].decode() and w.p2.iin not in document[1].decode()
    await world.press(user, "rec:csv")
    assert last_to(standin, user.id).document[0] == "rastau-mydata.csv"

    # /withdraw asks first; "no" changes nothing
    await world.send(user, "/withdraw")
    prompt = last_to(standin, user.id)
    assert words["ask"] in prompt.text and child.full_name in prompt.text
    assert [b[1] for b in buttons(markup_of(prompt))] == ["rec:withdraw", "rec:keep"]
    await world.press(user, "rec:keep")
    assert words["kept"] in last_to(standin, user.id).text
    assert len(await registry.face_references(ctx, w.p1.id)) == 2
    await world.press(user, "rec:withdraw")
    assert words["done"] in last_to(standin, user.id).text
    assert await registry.face_references(ctx, w.p1.id) == []
    # nobody else's face was touched, the namesake's at the other clinic least of all
    assert len(await registry.face_references(ctx, w.p2.id)) == 2
    assert len(await registry.face_references(ctx, namesake.id)) == 2
    await world.deliver()
    notices = [m for m in texts_to(standin, admin.id) if "согласие на распознавание лица" in m]
    assert sorted(n.split("пациент ")[1].split(" (")[0] for n in notices) == sorted([w.p1.full_name, child.full_name])
    assert all(w.p1.iin not in n and child.iin not in n for n in notices)
    await world.send(user, "/mydata")
    assert words["destroyed"] in texts_to(standin, user.id)[-3]

    # /unlink asks first, then forgets the chat: nothing more comes here
    await world.send(user, "/unlink")
    assert words["unlink"] in last_to(standin, user.id).text
    await world.press(user, "rec:unlink")
    assert words["unlinked"] in last_to(standin, user.id).text
    async with ctx.uow(read_only=True) as uow:
        assert (await uow.patients.get(w.p1.id)).chat_id is None
        assert (await uow.patients.get(child.id)).chat_id is None
    before = len(standin.messages_to(user.id))
    await visit(ctx, w, w.p1, 5)
    ctx.clock.advance(dt.timedelta(minutes=10))
    await world.deliver()
    assert len(standin.messages_to(user.id)) == before


async def test_a_stranger_pressing_withdraw_changes_nothing(ctx, clinic_world, world, standin):
    w = clinic_world
    await registry.record_consent(ctx, w.clinic.id, w.p1.id, "nurse Dana")
    await registry.enrol_face(ctx, w.clinic.id, w.p1.id, [_encoding(1)])
    stranger = User(8200)
    await world.press(stranger, "rec:withdraw")  # a forged button from a chat that is no patient's
    await world.press(stranger, "rec:unlink")
    await world.send(stranger, "/mydata")
    assert "/mydata" in last_to(standin, stranger.id).text
    assert len(await registry.face_references(ctx, w.p1.id)) == 1
    assert all(a and "/" in a for a in callback_answers(standin)[-2:])
