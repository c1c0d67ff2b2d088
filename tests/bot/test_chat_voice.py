"""Issue 17, the chat as people meet it: family numbers named, a cancelled or replaced code marked void where it is,
a doctor asked before a code is replaced, a menu per person, onboarding that does not restart, a privacy notice that
says what is kept, texts in native Kazakh and Russian, and an admins' CSV that Excel opens by double-click.
All against the real aiogram Bot talking HTTP to the Bot API stand-in."""
from __future__ import annotations

import csv
import datetime as dt
import io
import re

import pytest
from babel.messages.pofile import read_po

from bot.app import publish_commands
from bot.i18n import LOCALES_DIR
from bot.scheduling import close_windows_job
from core.codes import CodeOutcome
from core.errors import IllegalTransition
from core.services import registry
from core.services.codes import verify_code
from core.services.visits import cancel_visit
from tests.bot.support import User, buttons, callback_answers, last_to, link, markup_of, texts_to, visit
from tests.conftest import VALID_IINS

CODE = re.compile(r"<code>(\d{6})</code>")
KOVALEVA = "Ковалева Мария Петровна"


async def add_to_the_family(ctx, w):
    """A second person on Ivan P.'s phone (p2): a family number."""
    return (await registry.upsert_patient(ctx, w.clinic.id, VALID_IINS[3], KOVALEVA, w.p2.phone, "ru")).patient


def edits_to(standin, chat_id: int):
    return [m for m in standin.messages_to(chat_id) if m.method.lower() == "editmessagetext"]


def sends_to(standin, chat_id: int):
    return [m for m in standin.messages_to(chat_id) if m.method.lower() == "sendmessage"]


# --- 1. family numbers -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lang", ["ru", "kk"])
async def test_a_family_number_names_the_patient_in_every_code_and_question(ctx, clinic_world, world, standin,
                                                                             lang):
    w = clinic_world
    kid = await add_to_the_family(ctx, w)
    user = User(7810)
    await link(world, user, w.p2.phone, lang)
    summary = last_to(standin, user.id).text
    assert "Ковалева М. П." in summary and "Ivan P." in summary, "linking says whom the number speaks for"

    theirs = await visit(ctx, w, kid, 5)
    await world.deliver()
    code_message = last_to(standin, user.id).text
    expected = {"ru": "Приём пациента Ковалева М. П.: 25 ноября 2026, 09:05",
                "kk": "Ковалева М. П. қабылдауы: 2026 жылғы 25 қараша, 09:05"}[lang]
    assert expected in code_message and "Ivan P." not in code_message
    assert CODE.search(code_message)

    ctx.clock.advance(dt.timedelta(hours=3))
    await close_windows_job(ctx)
    await world.deliver()
    question = last_to(standin, user.id).text
    expected = {"ru": "Пациент Ковалева М. П. был у врача 25 ноября в 09:05?",
                "kk": "Ковалева М. П. 25 қараша, сағат 09:05-те дәрігердің қабылдауында болды ма?"}[lang]
    assert question.startswith(expected), question
    assert [b[1] for b in buttons(markup_of(last_to(standin, user.id)))] == [f"ans:yes:{theirs.id}",
                                                                          f"ans:no:{theirs.id}"]


async def test_one_person_at_two_clinics_is_not_a_family(ctx, clinic_world, world, standin):
    """Two patient rows with one IIN are one person: no names, the plain "you" texts."""
    w = clinic_world
    other = await registry.create_clinic(ctx, "Emhana No. 7")
    doctor = await registry.add_doctor(ctx, other.id, "Dana Doctor", "+7 701 999 88 77")
    await registry.upsert_patient(ctx, other.id, w.p2.iin, "Ivan P.", w.p2.phone, "ru")
    user = User(7811)
    await link(world, user, w.p2.phone, "ru")
    assert "несколько пациентов" not in last_to(standin, user.id).text
    await visit(ctx, w, w.p2, 5)
    await world.deliver()
    message = last_to(standin, user.id).text
    assert message.startswith("Ваш приём: 25 ноября 2026, 09:05, врач — Aidos Seitkali, Emhana No. 5.")
    assert "Если не хотите фотографироваться" in message and "Код действует до 09:40." in message
    assert doctor.id


async def test_the_online_question_asks_whether_the_consultation_took_place(ctx, clinic_world, world, standin):
    w = clinic_world
    user = User(7812)
    await link(world, user, w.p2.phone, "ru")
    await visit(ctx, w, w.p2, 5, mode="online")
    ctx.clock.advance(dt.timedelta(hours=3))
    await close_windows_job(ctx)
    await world.deliver()
    question = last_to(standin, user.id).text
    assert question.startswith("Ваша онлайн-консультация 25 ноября в 09:05 состоялась?")
    assert "Врач: Aidos Seitkali, Emhana No. 5." in question
    await link(world, User(7813), w.p1.phone, "kk")
    await visit(ctx, w, w.p1, 5)
    ctx.clock.advance(dt.timedelta(hours=3))
    await close_windows_job(ctx)
    await world.deliver()
    assert last_to(standin, 7813).text.startswith("25 қараша, сағат 12:05-те дәрігердің қабылдауында болдыңыз ба?")


# --- 2. a visit cancelled after its code was sent ---------------------------------------------------------------

@pytest.mark.parametrize("family", [False, True])
async def test_a_cancelled_visit_is_told_and_its_code_message_made_void(ctx, clinic_world, world, standin, family):
    w = clinic_world
    if family:
        await add_to_the_family(ctx, w)
    user = User(7820)
    await link(world, user, w.p2.phone, "ru")
    v = await visit(ctx, w, w.p2, 5)
    await world.deliver()
    code_message = last_to(standin, user.id)
    code = CODE.search(code_message.text).group(1)

    await cancel_visit(ctx, w.clinic.id, v.id)
    await world.deliver()
    notice = sends_to(standin, user.id)[-1].text
    assert "Клиника отменила этот приём" in notice and "25 ноября 2026, 09:05" in notice
    assert ("Приём пациента Ivan P." in notice) is family
    [edit] = edits_to(standin, user.id)
    assert edit.message_id == code_message.message_id, "the code message itself, in the chat it is in"
    assert "больше не действует" in edit.text and code not in edit.text, "the code leaves the chat"
    with pytest.raises(IllegalTransition):
        await verify_code(ctx, w.clinic.id, v.id, code)


async def test_a_visit_cancelled_before_any_code_went_out_says_nothing(ctx, clinic_world, world, standin):
    w = clinic_world
    user = User(7821)
    await link(world, user, w.p2.phone, "ru")
    v = await visit(ctx, w, w.p2, 120)
    before = len(standin.messages_to(user.id))
    await cancel_visit(ctx, w.clinic.id, v.id)
    await world.deliver()
    assert len(standin.messages_to(user.id)) == before


async def test_the_void_mark_goes_to_the_chat_the_code_was_in_after_the_phone_changed(ctx, clinic_world, world,
                                                                                     standin):
    """The patient's phone (so chat) changed after the code went out: the notice goes to the new chat, the edit to
    the old one, where the message is, never to a message with the same number in the new chat."""
    w = clinic_world
    old, new = User(7822), User(7823)
    await link(world, old, w.p2.phone, "ru")
    v = await visit(ctx, w, w.p2, 5)
    await world.deliver()
    code_message = last_to(standin, old.id)
    await registry.upsert_patient(ctx, w.clinic.id, w.p2.iin, "Ivan P.", "+7 705 000 11 22", "ru")
    await link(world, new, "+7 705 000 11 22", "ru")
    await cancel_visit(ctx, w.clinic.id, v.id)
    await world.deliver()
    assert "Клиника отменила этот приём" in sends_to(standin, new.id)[-1].text
    assert edits_to(standin, new.id) == []
    assert [e.message_id for e in edits_to(standin, old.id)] == [code_message.message_id]


# --- 3. a repeated /code ------------------------------------------------------------------------------------------

async def test_a_repeated_code_request_asks_the_doctor_first_and_marks_the_old_code_replaced(ctx, clinic_world, world,
                                                                                            standin):
    w = clinic_world
    doctor, patient = User(7830), User(7831)
    await link(world, doctor, w.doctor.phone, "ru")
    await link(world, patient, w.p2.phone, "ru")
    online = await visit(ctx, w, w.p2, 5, mode="online")
    await world.press(doctor, f"code:{online.id}")
    await world.deliver()
    first = last_to(standin, patient.id)
    first_code = CODE.search(first.text).group(1)
    sent = len(standin.messages_to(patient.id))

    ctx.clock.advance(dt.timedelta(minutes=2))
    await world.press(doctor, f"code:{online.id}")
    await world.deliver()
    asked = last_to(standin, doctor.id)
    assert "уже отправлен в 09:00" in asked.text and "Отправить новый?" in asked.text
    assert [b[1] for b in buttons(markup_of(asked))] == [f"codeagain:new:{online.id}", f"codeagain:keep:{online.id}"]
    assert len(standin.messages_to(patient.id)) == sent, "nothing new reaches the patient before the doctor decides"

    await world.press(doctor, f"codeagain:keep:{online.id}")
    await world.deliver()
    assert "остаётся в силе" in callback_answers(standin)[-1]
    assert len(standin.messages_to(patient.id)) == sent

    await world.press(doctor, f"code:{online.id}")
    await world.press(doctor, f"codeagain:new:{online.id}")
    await world.deliver()
    second = sends_to(standin, patient.id)[-1]
    second_code = CODE.search(second.text).group(1)
    [edit] = edits_to(standin, patient.id)
    assert edit.message_id == first.message_id and "Этот код заменён" in edit.text and first_code not in edit.text
    assert (await verify_code(ctx, w.clinic.id, online.id, second_code)).outcome is CodeOutcome.VERIFIED


async def test_a_code_asked_for_again_after_a_while_is_sent_without_asking(ctx, clinic_world, world, standin):
    w = clinic_world
    doctor, patient = User(7832), User(7833)
    await link(world, doctor, w.doctor.phone, "kk")
    await link(world, patient, w.p2.phone, "ru")
    online = await visit(ctx, w, w.p2, 5, mode="online", minutes=40)
    await world.press(doctor, f"code:{online.id}")
    await world.deliver()
    ctx.clock.advance(dt.timedelta(minutes=20))
    await world.press(doctor, f"code:{online.id}")
    assert callback_answers(standin)[-1] == "Пациентке жіберілді."
    await world.deliver()
    assert len([m for m in sends_to(standin, patient.id) if CODE.search(m.text or "")]) == 2


async def test_the_doctor_is_asked_in_kazakh_with_the_time_in_the_right_case(ctx, clinic_world, world, standin):
    w = clinic_world
    doctor, patient = User(7834), User(7835)
    await link(world, doctor, w.doctor.phone, "kk")
    await link(world, patient, w.p2.phone, "ru")
    online = await visit(ctx, w, w.p2, 5, mode="online")
    await world.press(doctor, f"code:{online.id}")
    await world.deliver()
    await world.press(doctor, f"code:{online.id}")
    assert "09:00-да жіберілген" in last_to(standin, doctor.id).text


# --- 4. a command menu per chat ------------------------------------------------------------------------------------

async def test_each_chat_sees_only_its_own_commands(ctx, clinic_world, world, standin):
    w = clinic_world
    await publish_commands(world.bot, world.i18n, world.dp)
    stranger, patient, doctor, admin = User(7840), User(7841), User(7842), User(7843)
    default = standin.menu_for(stranger.id, "ru")
    assert default == ["start", "language", "privacy", "help"], "an unconnected chat: no /code, no /digest"

    await link(world, patient, w.p2.phone, "ru")
    await link(world, doctor, w.doctor.phone, "ru")
    await link(world, admin, w.admin.phone, "kk")
    mine = standin.menu_for(patient.id)
    assert "visits" in mine and "code" not in mine and "digest" not in mine and "start" not in mine
    assert standin.menu_for(doctor.id) == ["code", "language", "privacy", "help", "stop"]
    help_line = dict(standin.menus[("chat", doctor.id, "")])["help"]
    assert help_line == "что бот умеет для врача", "a doctor's /help is a doctor's"
    assert standin.menu_for(admin.id)[0] == "digest"
    assert dict(standin.menus[("chat", admin.id, "")])["digest"] == "емхананың күнделікті есебі"

    await world.send(doctor, "/language")
    await world.press(doctor, "lang:kk")
    assert dict(standin.menus[("chat", doctor.id, "")])["code"] == "онлайн кеңеске код жіберу"

    await world.send(patient, "/stop")
    assert standin.menu_for(patient.id, "ru") == default, "a stopped chat falls back to the unconnected menu"


# --- 5. onboarding ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("lang", "words"), [("ru", "Вы уже подключены"), ("kk", "Сіз қосылып қойғансыз")])
async def test_start_when_already_connected_says_so_briefly(ctx, clinic_world, world, standin, lang, words):
    user = User(7850, language_code="ru" if lang == "kk" else "kk")
    await link(world, user, clinic_world.p2.phone, lang)
    await world.send(user, "/start")
    reply = last_to(standin, user.id)
    assert reply.text.startswith(words) and len(reply.text) < 250
    assert "Здравствуйте" not in reply.text and "Сәлеметсіз бе" not in reply.text, "not the greeting again"
    assert buttons(markup_of(reply)) and buttons(markup_of(reply))[0][1] == "contact"


@pytest.mark.parametrize("typed", ["+7 705 765 43 21", "87057654321", "8 (705) 765-43-21"])
async def test_a_typed_phone_number_gets_press_the_button_not_a_restart(ctx, clinic_world, world, standin, typed):
    user = User(7851)
    await world.send(user, "/start")
    await world.press(user, "lang:kk")
    await world.send(user, typed)
    reply = last_to(standin, user.id)
    assert "батырмасын басыңыз" in reply.text and "Telegram" in reply.text, "what to do, and why"
    assert buttons(markup_of(reply)) == [("📱 Телефон нөмірімді жіберу", "contact")]
    assert sum("Сәлеметсіз бе" in t for t in texts_to(standin, user.id)) == 1, "no restart"
    async with ctx.uow() as uow:
        assert (await uow.patients.get(clinic_world.p2.id)).chat_id is None, "typing proves nothing"


# --- 6. greeting and privacy notice ---------------------------------------------------------------------------------

async def test_greeting_and_privacy_notice_fit_a_phone_screen_and_say_what_is_kept(ctx, world, standin):
    user = User(7860)
    await world.send(user, "/start")
    greeting = last_to(standin, user.id).text
    assert greeting.count("Сәлеметсіз бе") == 1 and greeting.count("Здравствуйте") == 1
    assert greeting.count("Тілді таңдаңыз") == 1 and greeting.count("Выберите язык") == 1
    assert len(greeting) < 450 and greeting.count("\n") <= 6
    for lang, kept in (("ru", ("номер телефона", "номер этого чата", "ответы", "зашифрованный образец")),
                       ("kk", ("Телефон нөміріңізді", "чаттың нөмірін", "жауаптарыңызды", "шифрланған үлгісін"))):
        await world.press(user, f"lang:{lang}")
        notice = last_to(standin, user.id).text
        assert all(word in notice for word in kept), notice
        assert "/mydata" in notice and "/withdraw" in notice and "/stop" in notice
        assert len(notice) < 600 and notice.count("\n") <= 9, "readable without scrolling"


# --- 7. language -----------------------------------------------------------------------------------------------------

def _strings(lang: str) -> list[str]:
    with (LOCALES_DIR / lang / "LC_MESSAGES" / "messages.po").open("rb") as fh:
        cat = read_po(fh, locale=lang)
    out: list[str] = []
    for m in cat:
        if m.id:
            out += list(m.string) if isinstance(m.string, tuple) else [m.string]
    return out


def test_russian_uses_neutral_forms_and_never_suggests_the_patient_paid():
    bad = [s for s in _strings("ru") if re.search(r"\w\(а\)|оплач|оплат", s)]
    assert not bad, bad


def test_kazakh_has_no_legal_dispute_words_no_abbreviated_months_and_never_reads_the_name_as_a_word():
    strings = _strings("kk")
    # the verb «даулау» and its forms (даулады, дауланған …); the noun «даулар» in admins' texts is plain enough
    assert not [s for s in strings if re.search(r"\bдаула(?!р)", s.lower())], "«даулау» is not how patients speak"
    assert not [s for s in strings if re.search(r"\b(қаң|ақп|нау|сәу|мам|мау|шіл|там|қыр|қаз|қар|жел)\.", s)]
    assert not [s for s in strings if re.search(r"(?<!«)Растау(ды|ға|дың|да|дан|:)", s)], \
        "the bot's name is never declined like the word «confirmation»"
    assert not [s for s in strings if "мына емхананың пациенті" in s or "кеңес терезесі" in s], "no calques"


# --- 9. the admins' CSV ---------------------------------------------------------------------------------------------

async def test_the_admins_csv_opens_in_excel_with_russian_or_kazakh_settings(ctx, clinic_world, world, standin):
    w = clinic_world
    admin = User(7890)
    await link(world, admin, w.admin.phone, "kk")
    formula = (await registry.upsert_patient(ctx, w.clinic.id, VALID_IINS[4], "=HYPERLINK(\"http://x\";\"a\")",
                                             "+7 701 222 33 44", "ru")).patient
    ctx.clock.set(dt.datetime(2026, 11, 24, 4, 0, tzinfo=dt.UTC))
    await visit(ctx, w, w.p1, 30)
    await visit(ctx, w, formula, 90)
    ctx.clock.set(dt.datetime(2026, 11, 25, 4, 0, tzinfo=dt.UTC))
    await close_windows_job(ctx)
    await world.send(admin, "/digest 24.11.2026")
    document = [m for m in standin.messages_to(admin.id) if m.document][-1]
    data = document.document[1]
    assert data.startswith(b"\xef\xbb\xbf"), "the BOM: Excel reads UTF-8, not the ANSI code page"
    text = data.decode("utf-8-sig")
    dialect = csv.Sniffer().sniff(text[:2048], delimiters=",;")
    assert dialect.delimiter == ";", "the list separator of ru/kk regional settings"
    rows = list(csv.reader(io.StringIO(text, newline=""), dialect))
    assert rows[0][:4] == ["Қабылдау", "Күні мен уақыты", "Дәрігер", "Пациент"]
    assert len({len(r) for r in rows}) == 1 and len(rows) == 3, "every visit one row, every row whole"
    assert [r[3] for r in rows[1:]] == ["Asel N.", "'=HYPERLINK(\"http://x\";\"a\")"], "formulas stay text"
    assert "2026 жылғы 24 қараша" in document.text


async def test_visits_on_a_family_number_names_each_patient_and_one_person_is_not_named(ctx, clinic_world, world,
                                                                                       standin):
    w = clinic_world
    kid = await add_to_the_family(ctx, w)
    family, alone = User(7814), User(7815)
    await link(world, family, w.p2.phone, "ru")
    await link(world, alone, w.p1.phone, "kk")
    await visit(ctx, w, kid, -120)
    await visit(ctx, w, w.p2, -60)
    await visit(ctx, w, w.p1, -60)
    await world.send(family, "/visits")
    listing = last_to(standin, family.id).text
    assert "Ковалева М. П." in listing and "Ivan P." in listing
    await world.send(alone, "/visits")
    assert "Asel N." not in last_to(standin, alone.id).text, "one person: no names"


async def test_a_change_notice_on_a_family_number_names_whose_record_changed(ctx, clinic_world, world, standin):
    """The mother must not press «This wasn't me» about a consent recorded for her son: the notice names him."""
    w = clinic_world
    kid = await add_to_the_family(ctx, w)
    user = User(7816)
    await link(world, user, w.p2.phone, "ru")
    await registry.record_consent(ctx, w.clinic.id, kid.id, "медсестра Сауле")
    await world.deliver()
    notice = last_to(standin, user.id).text
    assert "Записано ваше согласие" in notice and "👤 <b>Ковалева М. П.</b>" in notice.split("\n\n")[0]
