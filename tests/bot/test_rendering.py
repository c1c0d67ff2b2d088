"""The renderer: the recipient's language, and None whenever a message must not go out."""
from __future__ import annotations

import datetime as dt

from bot.delivery.types import OutboxItem
from bot.i18n import make_i18n
from bot.rendering import OutboxRenderer
from core.services.chat import set_language, stop_chat
from core.services.visits import register_visit


def item(kind, recipient_kind, recipient_id, visit_id=None, **payload):
    return OutboxItem(id=1, kind=kind, recipient_kind=recipient_kind, recipient_id=recipient_id, visit_id=visit_id,
                      payload=payload, attempts=0)


async def test_each_recipient_gets_their_own_language(ctx, clinic_world):
    w = clinic_world
    async with ctx.uow() as uow:
        await uow.patients.set_chat(w.p1.phone, 101)  # p1 chose kk at the clinic
        await uow.patients.set_chat(w.p2.phone, 102)  # p2 ru
        await uow.admins.set_chat(w.admin.phone, 103)
        await uow.commit()
    await set_language(ctx, 103, "kk")
    renderer = OutboxRenderer(ctx, make_i18n())
    visits = [await register_visit(ctx, clinic_id=w.clinic.id, doctor_id=w.doctor.id, patient_id=p.id,
                                   start=ctx.clock.now() + dt.timedelta(minutes=5), duration=dt.timedelta(minutes=15),
                                   mode="online", service_code="A01") for p in (w.p1, w.p2)]
    kk = await renderer.render(item("visit_code", "patient", w.p1.id, visits[0].id))
    ru = await renderer.render(item("visit_code", "patient", w.p2.id, visits[1].id))
    assert kk[0].chat_id == 101 and "Онлайн кеңесіңіз" in kk[0].text and "09:05" in kk[0].text
    assert ru[0].chat_id == 102 and "Ваша онлайн-консультация" in ru[0].text
    digest = await renderer.render(item("daily_digest", "admin", w.admin.id, clinic_id=w.clinic.id, day="2026-11-25"))
    assert digest[0].chat_id == 103 and "Есеп" in digest[0].text and digest[1].document is not None


async def test_nothing_is_rendered_when_it_must_not_go_out(ctx, clinic_world):
    w = clinic_world
    renderer = OutboxRenderer(ctx, make_i18n())
    later = await register_visit(ctx, clinic_id=w.clinic.id, doctor_id=w.doctor.id, patient_id=w.p1.id,
                                 start=ctx.clock.now() + dt.timedelta(hours=3), duration=dt.timedelta(minutes=15),
                                 mode="in_person", service_code="A01")
    code = item("visit_code", "patient", w.p1.id, later.id)
    assert await renderer.render(code) is None, "no linked chat"
    async with ctx.uow() as uow:
        await uow.patients.set_chat(w.p1.phone, 201)
        await uow.commit()
    assert await renderer.render(code) is None, "too early: no code may be issued yet"
    async with ctx.uow() as uow:
        assert await uow.codes.current(later.id) is None, "and none was stored"
    async with ctx.uow() as uow:
        await uow.patients.mark_chat_blocked(201)
        await uow.commit()
    assert await renderer.render(item("attendance_prompt", "patient", w.p1.id, later.id)) is None, "blocked"
    assert await renderer.render(item("daily_digest", "admin", w.admin.id, clinic_id=w.clinic.id,
                                      day="2026-11-25")) is None, "admin not linked"
    async with ctx.uow() as uow:
        await uow.admins.set_chat(w.admin.phone, 202)
        await uow.commit()
    await stop_chat(ctx, 202)
    assert await renderer.render(item("dispute_notice", "admin", w.admin.id, later.id)) is None, "stopped"
    assert await renderer.render(item("no_such_kind", "patient", w.p1.id)) is None
    assert await renderer.render(item("visit_code", "patient", 99999, later.id)) is None, "recipient gone"
