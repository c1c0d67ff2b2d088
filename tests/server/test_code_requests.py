"""Code requests: capped per visit (25 in a row must not queue 25 codes to one patient), exact under
concurrency, and honest about the channel: no linked chat means no code, said as such."""
from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import insert

from core.db import tables as t
from core.model import OutboxKind, VisitMode
from tests.server.conftest import add_visit

API = "/api/v1"


async def link_chat(ctx, tenant, patient: int = 0, chat_id: int = 5001, *, blocked=False, stopped=False) -> None:
    async with ctx.uow() as uow:
        patient_row = await uow.patients.get(tenant.patient_ids[patient])
        await uow.patients.set_chat(patient_row.phone, chat_id)
        if blocked:
            await uow.patients.mark_chat_blocked(chat_id)
        if stopped:
            now = ctx.clock.now()
            await uow.conn.execute(insert(t.chat_users).values(chat_id=chat_id, language="kk", stopped=True,
                                                               created_at=now, updated_at=now))
        await uow.commit()


async def queued_codes(ctx, visit_id: int) -> int:
    async with ctx.uow() as uow:
        return len(await uow.outbox.pending(visit_id=visit_id, kind=OutboxKind.VISIT_CODE))


async def test_requests_are_capped_per_visit(client, ctx, tenants):
    a, _ = tenants
    await link_chat(ctx, a)
    visit = await add_visit(ctx, a, mode=VisitMode.ONLINE)
    url = f"{API}/visits/{visit.id}/code-requests"
    answers = [await client.post(url, headers=a.h()) for _ in range(25)]
    assert [r.status for r in answers] == [202] * 3 + [429] * 22
    assert [await r.json() for r in answers[:3]] == [
        {"status": "queued", "channel": "telegram", "requests_left": left} for left in (2, 1, 0)]
    capped = await answers[3].json()
    assert capped["code"] == "code_requests_capped" and "face" in capped["detail"]
    assert await queued_codes(ctx, visit.id) == 3


async def test_the_cap_is_exact_under_concurrency(client, ctx, tenants):
    a, _ = tenants
    await link_chat(ctx, a)
    visit = await add_visit(ctx, a, mode=VisitMode.ONLINE)
    url = f"{API}/visits/{visit.id}/code-requests"
    answers = await asyncio.gather(*(client.post(url, headers=a.h()) for _ in range(12)))
    assert sorted(r.status for r in answers) == [202] * 3 + [429] * 9
    assert await queued_codes(ctx, visit.id) == 3


async def test_the_cap_is_a_setting(aiohttp_client, settings, ctx, tenants, faces):
    from server.app import create_app

    a, _ = tenants
    await link_chat(ctx, a)
    ctx.settings = settings.model_copy(update={"code_requests_per_visit": 1})
    client = await aiohttp_client(create_app(ctx.settings, ctx=ctx, face_pool=faces))
    visit = await add_visit(ctx, a, mode=VisitMode.ONLINE)
    url = f"{API}/visits/{visit.id}/code-requests"
    assert [(await client.post(url, headers=a.h())).status for _ in range(2)] == [202, 429]


@pytest.mark.parametrize("chat", ["none", "blocked", "stopped"])
async def test_a_patient_no_chat_can_reach_is_409_and_nothing_is_queued(client, ctx, tenants, chat):
    a, _ = tenants
    if chat != "none":
        await link_chat(ctx, a, blocked=chat == "blocked", stopped=chat == "stopped")
    visit = await add_visit(ctx, a)
    before = await queued_codes(ctx, visit.id)  # the scheduled code of an in-person visit
    response = await client.post(f"{API}/visits/{visit.id}/code-requests", headers=a.h())
    assert response.status == 409
    problem = await response.json()
    assert problem["code"] == "patient_unreachable" and "face" in problem["detail"]
    assert await queued_codes(ctx, visit.id) == before
    async with ctx.uow() as uow:
        assert (await uow.conn.execute(t.visits.select().where(t.visits.c.id == visit.id))).one().code_requests == 0
