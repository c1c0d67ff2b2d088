"""The running scheduler delivers what is due and closes windows, without anyone calling the jobs by hand."""
from __future__ import annotations

import asyncio
import datetime as dt

from bot.scheduling import start_scheduler
from core.model import VisitState
from tests.bot.support import User, last_to, link, visit


async def test_started_scheduler_closes_windows_and_delivers(ctx, clinic_world, world, standin):
    user = User(7901)
    await link(world, user, clinic_world.p2.phone, "ru")
    ctx.clock.advance(dt.timedelta(hours=-3))
    past = await visit(ctx, clinic_world, clinic_world.p2, 60)  # registered in time (a backdated one is gathered)
    ctx.clock.advance(dt.timedelta(hours=3))  # and now it was two hours ago
    scheduler = await start_scheduler(ctx, world.dispatcher)  # catch-up closes the window at once
    try:
        for _ in range(50):
            await asyncio.sleep(0.1)
            if standin.messages_to(user.id) and "Вы были у врача" in (last_to(standin, user.id).text or ""):
                break
    finally:
        scheduler.shutdown(wait=False)
    assert "Вы были у врача" in last_to(standin, user.id).text
    async with ctx.uow() as uow:
        assert (await uow.visits.get(past.id)).state is VisitState.UNVERIFIED
