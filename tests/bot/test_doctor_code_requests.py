"""The doctor's /code in the bot meets the same rules as the API: capped per visit, and no code for a patient
no chat reaches, each said in the doctor's language instead of "sent"."""
from __future__ import annotations

from tests.bot.support import User, callback_answers, link, visit


async def test_the_doctor_is_told_when_the_codes_for_a_consultation_run_out(ctx, clinic_world, world, standin):
    w = clinic_world
    doctor, patient = User(7601), User(7602)
    await link(world, doctor, w.doctor.phone, "kk")
    await link(world, patient, w.p2.phone, "ru")
    online = await visit(ctx, w, w.p2, 5, mode="online")
    await world.press(doctor, f"code:{online.id}")
    for _ in range(3):  # a code sent moments ago: the doctor is asked first and confirms each new one
        await world.press(doctor, f"codeagain:new:{online.id}")
    answers = callback_answers(standin)[-4:]
    assert len(set(answers[:3])) == 1 and "кодтардың бәрі жіберіліп қойды" in answers[3]


async def test_no_code_is_sent_to_a_patient_without_the_bot(ctx, clinic_world, world, standin):
    w = clinic_world
    doctor = User(7611)
    await link(world, doctor, w.doctor.phone, "ru")
    online = await visit(ctx, w, w.p1, 5, mode="online")  # p1 never linked a chat
    await world.press(doctor, f"code:{online.id}")
    assert "не подключил бота" in callback_answers(standin)[-1]
    async with ctx.uow() as uow:
        assert await uow.outbox.pending(visit_id=online.id, kind="visit_code") == []
