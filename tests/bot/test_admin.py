"""The clinic admins: the 08:00 digest (counts, CSV matching the database), /digest on demand, dedupe."""
from __future__ import annotations

import csv
import datetime as dt
import io

from sqlalchemy import func, select

from bot.scheduling import build_scheduler, close_windows_job, daily_digest_job, digest_catch_up
from core.clock import ALMATY
from core.db import tables as t
from core.iin import mask_iin
from core.model import Actor, VerificationMethod
from core.services import registry
from core.services.visits import cancel_visit, patient_confirms, patient_disputes, register_visit
from tests.bot.support import User, last_to, link, texts_to
from tests.conftest import VALID_IINS

DAY = dt.date(2026, 11, 25)


async def _verify(ctx, visit_id, method):
    async with ctx.uow() as uow:
        v = await uow.visits.get(visit_id, lock=True)
        v.verify(method, Actor.DOCTOR, ctx.clock.now())
        await uow.visits.save(v)
        await uow.commit()


async def busy_day(ctx, w):
    """Six visits on 25 Nov: face+confirmed, code, unverified, disputed (with reason), cancelled, and one by a
    second doctor whose patient never connected."""
    second = await registry.add_doctor(ctx, w.clinic.id, "Bota Zhaksylyk", "+7 707 222 33 44")
    p3 = (await registry.upsert_patient(ctx, w.clinic.id, VALID_IINS[2], "Dana K.", "+7 747 000 11 22")).patient
    start = dt.datetime(2026, 11, 25, 9, 0, tzinfo=ALMATY)
    visits = []
    for i, (doctor, patient) in enumerate([(w.doctor, w.p1), (w.doctor, w.p2), (w.doctor, w.p1), (w.doctor, w.p2),
                                           (w.doctor, w.p1), (second, p3)]):
        visits.append(await register_visit(ctx, clinic_id=w.clinic.id, doctor_id=doctor.id, patient_id=patient.id,
                                           start=start + dt.timedelta(minutes=30 * i),
                                           duration=dt.timedelta(minutes=20), mode="in_person", service_code="A01"))
    ctx.clock.set(start + dt.timedelta(minutes=5))
    await _verify(ctx, visits[0].id, VerificationMethod.FACE)
    await _verify(ctx, visits[1].id, VerificationMethod.CODE)
    await cancel_visit(ctx, w.clinic.id, visits[4].id)
    ctx.clock.set(dt.datetime(2026, 11, 25, 18, 0, tzinfo=ALMATY))
    await close_windows_job(ctx)
    await patient_confirms(ctx, visits[0].id, [w.p1.id])
    await patient_disputes(ctx, visits[3].id, [w.p2.id], reason="=HYPERLINK(\"x\") меня не было")
    return visits, p3


async def test_digest_at_eight_with_counts_and_a_csv_matching_the_database(ctx, clinic_world, world, standin):
    w = clinic_world
    admin = User(8001)
    await link(world, admin, w.admin.phone, "ru")
    await link(world, User(8011), w.p1.phone, "kk")
    visits, p3 = await busy_day(ctx, w)
    await world.deliver()  # the dispute notice goes out at once
    assert f"№{visits[3].id}" in last_to(standin, admin.id).text

    ctx.clock.set(dt.datetime(2026, 11, 26, 7, 59, tzinfo=ALMATY))
    assert await digest_catch_up(ctx) == 0, "before 08:00 nothing is due"
    ctx.clock.set(dt.datetime(2026, 11, 26, 8, 0, tzinfo=ALMATY))
    assert await daily_digest_job(ctx) == 1
    assert await daily_digest_job(ctx) == 0 and await digest_catch_up(ctx) == 0, "a restart never doubles it"
    await world.deliver()

    text_msg, csv_msg = standin.messages_to(admin.id)[-2:]
    text = text_msg.text
    assert "Сводка: Emhana No. 5, 25 ноября 2026" in text
    for line in ("5 приёмов", "подтверждено живой проверкой лица: 0",
                 "подтверждено по одному кадру лица (слабее): 1", "подтверждено кодом: 1", "не подтверждено: 3",
                 "пациенты подтвердили: 1", "пациенты сообщили, что приёма не было: 1", "пока без ответа: 3",
                 "отменено: 1",
                 "По 3 приёмам пациенты недоступны в чате", "Aidos Seitkali: 4 / 2 / 2 / 1",
                 "Bota Zhaksylyk: 1 / 0 / 1 / 0"):
        assert line in text, line
    for v in (visits[2], visits[3], visits[5]):
        assert f"#{v.id} " in text
    assert f"#{visits[0].id} " not in text and w.p1.iin not in text and mask_iin(p3.iin) in text

    assert csv_msg.method == "sendDocument"
    filename, data = csv_msg.document
    assert filename == f"rastau-digest-{w.clinic.id}-2026-11-25.csv" and data.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig")), delimiter=";"))
    assert rows[0][:5] == ["Приём", "Дата и время", "Врач", "Пациент", "ИИН"]
    async with ctx.uow() as uow:
        db = (await uow.conn.execute(
            select(t.visits.c.id, t.visits.c.state, t.patients.c.iin, t.visits.c.dispute_reason)
            .join(t.patients, t.patients.c.id == t.visits.c.patient_id).order_by(t.visits.c.start_at))).all()
    assert [int(r[0]) for r in rows[1:]] == [r.id for r in db]
    assert [r[4] for r in rows[1:]] == [mask_iin(r.iin) for r in db]
    labels = {"patient_confirmed": "подтверждён пациентом", "verified": "подтверждён", "unverified": "не подтверждён",
              "patient_disputed": "пациент сообщил, что приёма не было", "cancelled": "отменён"}
    assert [r[7] for r in rows[1:]] == [labels[r.state] for r in db]
    assert rows[4][10].startswith("'="), "a formula in a patient's reason is neutralised for spreadsheets"
    assert all(r[1].startswith("2026-11-25 ") for r in rows[1:])


async def test_quiet_day_is_one_line_not_silence(ctx, clinic_world, world, standin):
    w = clinic_world
    admin = User(8002)
    await link(world, admin, w.admin.phone, "kk")
    v = await register_visit(ctx, clinic_id=w.clinic.id, doctor_id=w.doctor.id, patient_id=w.p1.id,
                             start=dt.datetime(2026, 11, 25, 11, 0, tzinfo=ALMATY), duration=dt.timedelta(minutes=15),
                             mode="in_person", service_code="A01")
    async with ctx.uow() as uow:
        await uow.patients.set_chat(w.p1.phone, 8100)
        await uow.commit()
    ctx.clock.set(dt.datetime(2026, 11, 25, 11, 5, tzinfo=ALMATY))
    await _verify(ctx, v.id, VerificationMethod.FACE)
    await patient_confirms(ctx, v.id, [w.p1.id])
    ctx.clock.set(dt.datetime(2026, 11, 26, 8, 0, tzinfo=ALMATY))
    await daily_digest_job(ctx)
    before = len(standin.messages_to(admin.id))
    await world.deliver()
    new = standin.messages_to(admin.id)[before:]
    assert [m.text for m in new] == ["✅ Emhana No. 5, 2026 жылғы 25 қараша: барлық қабылдау расталды."]


async def test_digest_on_demand_and_who_may_ask(ctx, clinic_world, world, standin):
    w = clinic_world
    admin, patient = User(8003), User(8004)
    await link(world, admin, w.admin.phone, "ru")
    await link(world, patient, w.p2.phone, "ru")
    await busy_day(ctx, w)
    ctx.clock.set(dt.datetime(2026, 11, 26, 10, 0, tzinfo=ALMATY))
    await world.send(admin, "/digest")
    assert standin.messages_to(admin.id)[-1].method == "sendDocument"
    assert "25 ноября 2026" in standin.messages_to(admin.id)[-2].text
    await world.send(admin, "/digest 24.11.2026")
    assert "24 ноября 2026: приёмов не зарегистрировано" in last_to(standin, admin.id).text
    await world.send(admin, "/digest 2026-11-25 junk")
    assert standin.messages_to(admin.id)[-1].method == "sendDocument"
    for junk in ("/digest yesterday", "/digest 31.02.2026", "/digest ';DROP TABLE visits;--"):
        await world.send(admin, junk)
        assert "Не удалось разобрать дату" in last_to(standin, admin.id).text
    await world.send(admin, "/digest 01.01.2027")
    assert "ещё не наступил" in last_to(standin, admin.id).text
    await world.send(patient, "/digest")
    assert "только администраторам" in last_to(standin, patient.id).text
    assert not any("Сводка" in text for text in texts_to(standin, patient.id))


async def test_scheduler_jobs_are_defined_in_code(ctx, world):
    scheduler = build_scheduler(ctx, world.dispatcher)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert set(jobs) == {"close_windows", "deliver", "daily_digest", "auditor_summary", "prune_updates", "retention"}
    for daily in ("daily_digest", "auditor_summary"):
        cron = jobs[daily].trigger
        assert str(cron.timezone) == "Asia/Almaty"
        assert {f.name: str(f) for f in cron.fields}["hour"] == "8"
        assert {f.name: str(f) for f in cron.fields}["minute"] == "0"
    retention = {f.name: str(f) for f in jobs["retention"].trigger.fields}
    assert str(jobs["retention"].trigger.timezone) == "Asia/Almaty"
    assert (retention["hour"], retention["minute"]) == ("3", "30")  # at night, away from the morning digests


async def test_digest_catch_up_after_a_missed_morning(ctx, clinic_world):
    ctx.clock.set(dt.datetime(2026, 11, 26, 13, 0, tzinfo=ALMATY))
    assert await digest_catch_up(ctx) == 1
    assert await digest_catch_up(ctx) == 0
    async with ctx.uow() as uow:
        row = (await uow.conn.execute(select(t.outbox.c.payload, func.count()).where(
            t.outbox.c.kind == "daily_digest").group_by(t.outbox.c.payload))).one()
    assert '"day": "2026-11-25"' in row[0] and row[1] == 1
