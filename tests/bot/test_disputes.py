""""I wasn't there" as the patient means it (issue 17), against the real aiogram Bot over HTTP: ❌ asks once before
anything is recorded, the wait for a reason ends with any command, any button or time, the answer can be taken back
for a while from the patient's own chat only, and the patient is told who really heard of it."""
from __future__ import annotations

import datetime as dt

import pytest

from bot.scheduling import close_windows_job
from core.errors import NotFound
from core.model import VerificationMethod, VisitState
from core.services import auditors
from core.services.dispute_answers import TakeBackClosed, withdraw_dispute
from core.services.visits import patient_disputes
from tests.bot.support import User, buttons, callback_answers, last_to, link, markup_of, visit

AUDITOR_PHONE = "+7 701 999 00 11"


async def state_of(ctx, visit_id) -> VisitState:
    async with ctx.uow() as uow:
        return (await uow.visits.get(visit_id)).state


async def dispute_rows(ctx, visit_id) -> list:
    async with ctx.uow() as uow:
        return [r for r in await uow.outbox.pending(visit_id=visit_id) if r.kind == "dispute_notice"]


def edits_of(standin, message_id: int) -> list:
    return [m for m in standin.sent if m.message_id == message_id and m.method.lower().startswith("edit")]


async def asked(ctx, world, standin, w, user, patient, *, verified: bool = False):
    """A visit that is over, and the "were you there?" question in the patient's chat."""
    v = await visit(ctx, w, patient, 5)
    if verified:
        async with ctx.uow() as uow:
            row = await uow.visits.get(v.id, lock=True)
            row.verify(VerificationMethod.CODE, "doctor", ctx.clock.now() + dt.timedelta(minutes=6))
            await uow.visits.save(row)
            await uow.commit()
    ctx.clock.advance(dt.timedelta(hours=2))
    await close_windows_job(ctx)
    await world.deliver()
    prompt = last_to(standin, user.id)
    assert f"ans:no:{v.id}" in [b[1] for b in buttons(markup_of(prompt))]
    return v, prompt


async def dispute(world, standin, user, v, prompt):
    """❌ on the question, then «Yes, I wasn't there» on the confirmation; the confirmation message."""
    await world.press(user, f"ans:no:{v.id}", message_id=prompt.message_id, text=prompt.text)
    check = last_to(standin, user.id)
    sure = [b[1] for b in buttons(markup_of(check))]
    assert sure == [f"sure:yes:{v.id}:{prompt.message_id}", f"sure:back:{v.id}:{prompt.message_id}"]
    await world.press(user, sure[0], message_id=check.message_id, text=check.text)
    return check


async def test_cross_asks_once_before_anything_is_recorded(ctx, clinic_world, world, standin):
    w = clinic_world
    user, admin = User(7801), User(9801)
    await link(world, admin, w.admin.phone.lstrip("+"), "ru")
    await link(world, user, w.p2.phone, "ru")
    v, prompt = await asked(ctx, world, standin, w, user, w.p2)

    await world.press(user, f"ans:no:{v.id}", message_id=prompt.message_id, text=prompt.text)
    check = last_to(standin, user.id)
    assert "вас НЕ было на этом приёме" in check.text and w.doctor.full_name in check.text
    assert await state_of(ctx, v.id) is VisitState.UNVERIFIED and await dispute_rows(ctx, v.id) == []
    back = buttons(markup_of(check))[1][1]
    await world.press(user, back, message_id=check.message_id, text=check.text)
    assert "ничего не записано" in edits_of(standin, check.message_id)[-1].text
    assert await state_of(ctx, v.id) is VisitState.UNVERIFIED and await dispute_rows(ctx, v.id) == []
    assert not edits_of(standin, prompt.message_id), "the question keeps its ✅/❌ after «go back»"

    check = await dispute(world, standin, user, v, prompt)
    assert await state_of(ctx, v.id) is VisitState.PATIENT_DISPUTED
    recorded = edits_of(standin, check.message_id)[-1]
    assert "Записано: вас не было" in recorded.text and "Администраторам клиники сообщено" in recorded.text
    assert [b[1] for b in buttons(recorded.reply_markup)] == [f"undo:{v.id}"]
    assert edits_of(standin, prompt.message_id)[-1].reply_markup is None, "the question's buttons are answered"
    await world.deliver()
    assert f"№{v.id}" in last_to(standin, admin.id).text


async def test_a_double_tap_on_the_confirmation_records_one_dispute(ctx, clinic_world, world, standin):
    w = clinic_world
    user, admin = User(7802), User(9802)
    await link(world, admin, w.admin.phone.lstrip("+"), "ru")
    await link(world, user, w.p2.phone, "ru")
    v, prompt = await asked(ctx, world, standin, w, user, w.p2)
    check = await dispute(world, standin, user, v, prompt)
    await world.press(user, f"sure:yes:{v.id}:{prompt.message_id}", message_id=check.message_id)
    assert "уже записан" in callback_answers(standin)[-1]
    assert len(await dispute_rows(ctx, v.id)) == 1
    await world.send(user, "Я был в командировке")
    assert "пояснение добавлено" in last_to(standin, user.id).text, "a double tap does not end the wait"
    await world.deliver()
    notices = [m.text or "" for m in standin.messages_to(admin.id) if f"№{v.id}" in (m.text or "")]
    assert sorted(text[:2].strip() for text in notices) == sorted(["⚠️", "📝"]), "one dispute and its reason"


@pytest.mark.parametrize("ender", ["/visits", "/help", "button"])
async def test_a_command_or_a_button_ends_the_wait_for_a_reason(ctx, clinic_world, world, standin, ender):
    w = clinic_world
    user = User(7810)
    await link(world, user, w.p2.phone, "ru")
    v, prompt = await asked(ctx, world, standin, w, user, w.p2)
    await dispute(world, standin, user, v, prompt)
    ask = last_to(standin, user.id)
    assert "опишите одним сообщением" in ask.text and [b[1] for b in buttons(markup_of(ask))] == [f"noreason:{v.id}"]
    if ender == "button":
        await world.press(user, "vl:page:0:0")
    else:
        await world.send(user, ender)
    assert edits_of(standin, ask.message_id)[-1].reply_markup is None, "«Skip» is taken off when the wait ends"
    await world.send(user, "Здравствуйте, подскажите, когда мой следующий приём?")
    async with ctx.uow() as uow:
        assert (await uow.visits.get(v.id)).dispute_reason is None
    assert not [r for r in await dispute_rows(ctx, v.id) if "reason" in r.payload]


async def test_the_wait_for_a_reason_ends_with_time(ctx, clinic_world, world, standin):
    w = clinic_world
    user = User(7811)
    await link(world, user, w.p2.phone, "ru")
    v, prompt = await asked(ctx, world, standin, w, user, w.p2)
    await dispute(world, standin, user, v, prompt)
    ask = last_to(standin, user.id)
    assert "Я подожду 30 минут" in ask.text
    ctx.clock.advance(dt.timedelta(minutes=ctx.settings.dispute_reason_minutes, seconds=1))
    await world.send(user, "Подскажите, когда мой следующий приём?")
    assert "Время для пояснения прошло" in last_to(standin, user.id).text
    assert edits_of(standin, ask.message_id)[-1].reply_markup is None
    async with ctx.uow() as uow:
        assert (await uow.visits.get(v.id)).dispute_reason is None


async def test_a_reason_in_time_is_filed_and_removes_skip(ctx, clinic_world, world, standin):
    w = clinic_world
    user = User(7812)
    await link(world, user, w.p2.phone, "ru")
    v, prompt = await asked(ctx, world, standin, w, user, w.p2)
    await dispute(world, standin, user, v, prompt)
    ask = last_to(standin, user.id)
    ctx.clock.advance(dt.timedelta(minutes=ctx.settings.dispute_reason_minutes - 1))
    await world.send(user, "Я был на работе")
    assert "пояснение добавлено" in last_to(standin, user.id).text
    assert edits_of(standin, ask.message_id)[-1].reply_markup is None
    async with ctx.uow() as uow:
        assert (await uow.visits.get(v.id)).dispute_reason == "Я был на работе"


async def test_the_patient_is_told_honestly_who_heard_of_the_dispute(ctx, clinic_world, world, standin):
    """No linked admin: never "the administrators were told". An auditor watching the clinic: the auditors were."""
    w = clinic_world
    first, second = User(7820), User(7821)
    await link(world, first, w.p2.phone, "ru")
    v, prompt = await asked(ctx, world, standin, w, first, w.p2)
    check = await dispute(world, standin, first, v, prompt)
    alone = edits_of(standin, check.message_id)[-1].text
    assert "Администраторам" not in alone and "ваш ответ только записан" in alone

    await auditors.add_auditor(ctx, "Dana Auditor", AUDITOR_PHONE, clinic_ids=[w.clinic.id])
    await link(world, User(9820), AUDITOR_PHONE, "ru")
    await link(world, second, w.p1.phone, "kk")
    v2, prompt2 = await asked(ctx, world, standin, w, second, w.p1)
    check2 = await dispute(world, standin, second, v2, prompt2)
    told = edits_of(standin, check2.message_id)[-1].text
    assert "төлеушінің аудиторларына хабарланды" in told and "әкімшілері хабардар" not in told
    await world.send(second, "Мен жұмыста болдым")
    assert "төлеушінің аудиторларына" in last_to(standin, second.id).text


async def test_the_patient_can_take_a_dispute_back_in_time_and_everyone_told_hears_of_it(ctx, clinic_world, world,
                                                                                         standin):
    w = clinic_world
    user, admin = User(7830), User(9830)
    await link(world, admin, w.admin.phone.lstrip("+"), "ru")
    await link(world, user, w.p2.phone, "ru")
    v, prompt = await asked(ctx, world, standin, w, user, w.p2, verified=True)
    check = await dispute(world, standin, user, v, prompt)
    await world.deliver()
    ctx.clock.advance(dt.timedelta(minutes=ctx.settings.dispute_undo_minutes - 1))
    await world.press(user, f"undo:{v.id}", message_id=check.message_id)
    assert "Отменено" in edits_of(standin, check.message_id)[-1].text
    assert await state_of(ctx, v.id) is VisitState.VERIFIED
    await world.deliver()
    assert f"отозвал «Меня там не было» по приёму №{v.id}" in last_to(standin, admin.id).text
    await world.press(user, f"undo:{v.id}", message_id=check.message_id)
    assert "отменять нечего" in callback_answers(standin)[-1]
    async with ctx.uow() as uow:
        steps = [r.action for r in await uow.audit.records(f"clinic:{w.clinic.id}")
                 if r.subject == f"visit:{v.id}"]
    assert "visit.patient_dispute" in steps and "visit.patient_withdraw_dispute" in steps

    # disputed again later: heard again (a key of its own), and now past the window it stays
    await patient_disputes(ctx, v.id, [w.p2.id])
    await world.deliver()
    assert sum(f"НЕ был на приёме №{v.id}" in (m.text or "") or f"№{v.id}" in (m.text or "")
               for m in standin.messages_to(admin.id)) == 3
    ctx.clock.advance(dt.timedelta(minutes=ctx.settings.dispute_undo_minutes, seconds=1))
    await world.press(user, f"undo:{v.id}")
    assert "только в течение 15 минут" in callback_answers(standin)[-1]
    assert await state_of(ctx, v.id) is VisitState.PATIENT_DISPUTED


async def test_only_the_patients_own_chat_can_take_a_dispute_back(ctx, clinic_world, world, standin):
    """A dishonest clinic cannot bury a dispute: not from another chat (its admin's, a chat it linked to another
    patient), not with the patient's ids but another chat, not after the window."""
    w = clinic_world
    user, admin = User(7840), User(9840)
    await link(world, admin, w.admin.phone.lstrip("+"), "ru")
    await link(world, user, w.p2.phone, "ru")
    v, prompt = await asked(ctx, world, standin, w, user, w.p2)
    await dispute(world, standin, user, v, prompt)
    await world.press(admin, f"undo:{v.id}")
    assert "нет среди ваших" in callback_answers(standin)[-1]
    with pytest.raises(NotFound):
        await withdraw_dispute(ctx, v.id, [w.p2.id], admin.id)
    other = User(7841)
    await link(world, other, w.p1.phone, "kk")
    await world.press(other, f"undo:{v.id}")
    assert await state_of(ctx, v.id) is VisitState.PATIENT_DISPUTED
    ctx.clock.advance(dt.timedelta(minutes=ctx.settings.dispute_undo_minutes, seconds=1))
    with pytest.raises(TakeBackClosed):
        await withdraw_dispute(ctx, v.id, [w.p2.id], user.id)
    assert await state_of(ctx, v.id) is VisitState.PATIENT_DISPUTED


async def test_a_clinic_relinking_the_patients_number_to_its_own_chat_cannot_take_the_dispute_back(
        ctx, clinic_world, world, standin):
    """The number now reaches a chat the clinic holds (a phone swapped, a contact shared from the clinic's phone):
    that chat is the patient's now, but not the one that said "I wasn't there", so it cannot take it back."""
    w = clinic_world
    user, clinics_phone = User(7842), User(7843)
    await link(world, user, w.p2.phone, "ru")
    v, prompt = await asked(ctx, world, standin, w, user, w.p2)
    await dispute(world, standin, user, v, prompt)
    await link(world, clinics_phone, w.p2.phone, "ru")
    async with ctx.uow() as uow:
        assert (await uow.patients.get(w.p2.id)).chat_id == clinics_phone.id
    await world.press(clinics_phone, f"undo:{v.id}")
    assert "нет среди ваших" in callback_answers(standin)[-1]
    assert await state_of(ctx, v.id) is VisitState.PATIENT_DISPUTED
    async with ctx.uow() as uow:
        marks = [e.detail or "" for e in await uow.visits.events(v.id)]
    assert not any(str(user.id) in mark for mark in marks), "the clinic sees the visit's history: no chat id in it"


async def test_backdated_visits_are_asked_about_in_one_message(ctx, clinic_world, world, standin):
    """A clinic registers a week of past visits at once: the patient gets one question listing them, a row of
    ✅/❌ per visit, and answering one keeps the others' rows; a single backdated visit is asked as usual."""
    w = clinic_world
    user, other = User(7850), User(7851)
    await link(world, user, w.p2.phone, "ru")
    await link(world, other, w.p1.phone, "kk")
    before = len(standin.messages_to(user.id))
    late = [await visit(ctx, w, w.p2, -days * 24 * 60) for days in (2, 3, 4, 5)]
    single = await visit(ctx, w, w.p1, -3 * 24 * 60)
    await close_windows_job(ctx)
    await world.deliver()
    assert len(standin.messages_to(user.id)) == before, "gathered for a few minutes first"
    ctx.clock.advance(dt.timedelta(minutes=ctx.settings.late_prompt_gather_minutes))
    await world.deliver()
    asked = standin.messages_to(user.id)[before:]
    assert len(asked) == 1, [m.text for m in asked]
    question = asked[0]
    assert "Клиника внесла на ваше имя 4 прошедших приёма" in question.text
    rows = [x for v in late for x in (f"ans:yes:{v.id}", f"ans:no:{v.id}")]
    assert [b[1] for b in buttons(markup_of(question))] == rows
    assert [b[1] for b in buttons(markup_of(last_to(standin, other.id)))] == [f"ans:yes:{single.id}",
                                                                              f"ans:no:{single.id}"]
    async with ctx.uow() as uow:
        prompts = [r for r in await uow.outbox.by_recipient_kind("patient") if r.kind == "attendance_prompt"
                   and r.recipient_id == w.p2.id]
    assert len(prompts) == 1, "the outbox holds the one question that was sent"

    await world.press(user, f"ans:yes:{late[0].id}", message_id=question.message_id, text=question.text,
                      markup=question.reply_markup)
    kept = edits_of(standin, question.message_id)[-1]
    assert [b[1] for b in buttons(kept.reply_markup)] == rows[2:]
    async with ctx.uow() as uow:
        assert (await uow.visits.get(late[0].id)).attended_claim_at is not None
    await world.press(user, f"ans:no:{late[1].id}", message_id=question.message_id, text=question.text,
                      markup=kept.reply_markup)
    check = last_to(standin, user.id)
    assert buttons(markup_of(check))[0][1] == f"sure:yes:{late[1].id}:0", "the other visits keep their rows"


async def test_a_visit_opened_from_visits_offers_its_own_choices_and_a_double_tap_records_one_answer(
        ctx, clinic_world, world, standin):
    w = clinic_world
    user = User(7860)
    await link(world, user, w.p2.phone, "ru")
    verified = await visit(ctx, w, w.p2, -3 * 24 * 60)
    unverified = await visit(ctx, w, w.p2, -2 * 24 * 60)
    async with ctx.uow() as uow:
        row = await uow.visits.get(verified.id, lock=True)
        row.verify(VerificationMethod.CODE, "doctor", ctx.clock.now() - dt.timedelta(days=3))
        await uow.visits.save(row)
        await uow.commit()
    await close_windows_job(ctx)
    await world.send(user, "/visits")
    listing = last_to(standin, user.id)
    assert [b[1] for b in buttons(markup_of(listing))] == [f"vl:open:0:{unverified.id}", f"vl:open:0:{verified.id}"]

    await world.press(user, f"vl:open:0:{verified.id}", message_id=listing.message_id, text=listing.text)
    view = edits_of(standin, listing.message_id)[-1]
    assert "Вы были на этом приёме?" in view.text
    assert [b[1] for b in buttons(view.reply_markup)] == [f"ans:yes:{verified.id}", f"ans:no:{verified.id}",
                                                          "vl:page:0:0"]
    for _ in range(2):  # a double tap
        await world.press(user, f"ans:yes:{verified.id}", message_id=listing.message_id, text=view.text)
    assert "уже записан" in callback_answers(standin)[-1]
    async with ctx.uow() as uow:
        steps = [e.step for e in await uow.visits.events(verified.id)]
    assert steps.count("patient_confirm") == 1

    await world.press(user, f"vl:open:0:{unverified.id}", message_id=listing.message_id, text=listing.text)
    view = edits_of(standin, listing.message_id)[-1]
    check = await dispute(world, standin, user, unverified, view)
    assert await state_of(ctx, unverified.id) is VisitState.PATIENT_DISPUTED
    assert edits_of(standin, listing.message_id)[-1].reply_markup is None, "the answered visit's buttons go"
    await world.press(user, f"sure:yes:{unverified.id}:{listing.message_id}", message_id=check.message_id)
    assert len(await dispute_rows(ctx, unverified.id)) == 1
    await world.send(user, "/visits")
    again = [b[1] for b in buttons(markup_of(last_to(standin, user.id)))]
    assert f"vl:open:0:{unverified.id}" not in again, "an answered visit has no button any more"


async def test_the_skip_button_goes_when_the_wait_ends_by_time_even_if_the_patient_never_writes(ctx, clinic_world,
                                                                                                world, standin):
    w = clinic_world
    user = User(7870)
    await link(world, user, w.p2.phone, "kk")
    v, prompt = await asked(ctx, world, standin, w, user, w.p2)
    await dispute(world, standin, user, v, prompt)
    ask = last_to(standin, user.id)
    assert [b[1] for b in buttons(markup_of(ask))] == [f"noreason:{v.id}"]
    await world.deliver()
    assert not edits_of(standin, ask.message_id), "still waiting"
    ctx.clock.advance(dt.timedelta(minutes=ctx.settings.dispute_reason_minutes))
    await world.deliver()
    closed = edits_of(standin, ask.message_id)[-1]
    assert "Түсініктеме беретін уақыт өтті" in closed.text and closed.reply_markup is None


async def test_this_wasnt_me_about_a_change_names_who_really_heard_of_it(ctx, clinic_world, world, standin):
    """The same rule for "this wasn't me" about a change to the patient's record: no linked admin, no claim that the
    administrators were told."""
    from core.services import registry
    w = clinic_world
    user = User(7880)
    await link(world, user, w.p2.phone, "ru")
    await registry.record_consent(ctx, w.clinic.id, w.p2.id, "registry desk")
    await world.deliver()
    notice = last_to(standin, user.id)
    change = buttons(markup_of(notice))[0][1]
    await world.press(user, change, message_id=notice.message_id, text=notice.text)
    said = edits_of(standin, notice.message_id)[-1].text
    assert "Записано: вы об этом не просили" in said and "Администратор" not in said
    assert "ваш ответ только записан" in said


async def test_on_a_family_number_the_check_and_the_list_name_whose_visit_it_is(ctx, clinic_world, world, standin):
    """A mother's phone also registered for her son: "you were NOT at this visit?" names the son's visit, so the
    mother does not dispute it by mistake for herself; /visits names each line's patient."""
    from core.services import registry
    from tests.conftest import VALID_IINS
    w = clinic_world
    son = (await registry.upsert_patient(ctx, w.clinic.id, VALID_IINS[3], "Ковалев Артём Петрович",
                                         w.p2.phone, "ru")).patient
    user = User(7890)
    await link(world, user, w.p2.phone, "ru")
    v, prompt = await asked(ctx, world, standin, w, user, son)
    await world.press(user, f"ans:no:{v.id}", message_id=prompt.message_id, text=prompt.text)
    assert "Ковалев А. П.:" in last_to(standin, user.id).text
    await world.send(user, "/visits")
    assert "Ковалев А. П.:" in last_to(standin, user.id).text
