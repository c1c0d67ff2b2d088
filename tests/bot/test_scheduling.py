"""The running scheduler delivers what is due and closes windows, without anyone calling the jobs by hand."""
from __future__ import annotations

import asyncio
import datetime as dt

from bot.scheduling import start_scheduler
from core.model import VisitState
from core.services.visits import register_visit
from tests.bot.support import User, last_to, link


async def test_started_scheduler_closes_windows_and_delivers(ctx, clinic_world, world, standin):
    user = User(7901)
    await link(world, user, clinic_world.p2.phone, "ru")
    past = await register_visit(ctx, clinic_id=clinic_world.clinic.id, doctor_id=clinic_world.doctor.id,
                                patient_id=clinic_world.p2.id, start=ctx.clock.now() - dt.timedelta(hours=2),
                                duration=dt.timedelta(minutes=20), mode="in_person", service_code="A01")
    scheduler = await start_scheduler(ctx, world.dispatcher)  # catch-up closes the window at once
    try:
        for _ in range(50):
            await asyncio.sleep(0.1)
            if standin.messages_to(user.id) and "Вы были на приёме" in (last_to(standin, user.id).text or ""):
                break
    finally:
        scheduler.shutdown(wait=False)
    assert "Вы были на приёме" in last_to(standin, user.id).text
    async with ctx.uow() as uow:
        assert (await uow.visits.get(past.id)).state is VisitState.UNVERIFIED
