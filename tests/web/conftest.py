"""The web dashboard in-process: the real server app (no OpenAPI conformance check: web pages are not the API) on
the test databases, two clinics, an admin of each linked to a chat, and an auditor of clinic A."""
from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from core.services import auditors, registry, web_sessions
from core.services.chat import link_chat_by_phone
from server.app import create_app
from tests.server.support import CLINIC_A_IINS, CLINIC_B_IINS, FakeAnalyser, Tenant, make_tenant
from tests.worlds import built_once

ADMIN_A_CHAT, ADMIN_B_CHAT, AUDITOR_CHAT = 5001, 5002, 5003
CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')
PROOF = re.compile(r'name="proof" value="([0-9a-f]{64})"')


@dataclass
class World:
    a: Tenant
    b: Tenant
    admin_a: int
    admin_b: int
    auditor: int


async def _world(ctx) -> World:
    a = await make_tenant(ctx, "Polyclinic A", CLINIC_A_IINS, 1110000)
    b = await make_tenant(ctx, "Polyclinic B", CLINIC_B_IINS, 2220000)
    admin_a = await registry.add_admin(ctx, a.clinic_id, "Aigerim Admin", "+77011234501")
    admin_b = await registry.add_admin(ctx, b.clinic_id, "Boris Admin", "+77011234502")
    auditor = await auditors.add_auditor(ctx, "Dana Auditor", "+77011234503", clinic_ids=[a.clinic_id])
    await link_chat_by_phone(ctx, ADMIN_A_CHAT, "+77011234501", "kk")
    await link_chat_by_phone(ctx, ADMIN_B_CHAT, "+77011234502", "ru")
    await link_chat_by_phone(ctx, AUDITOR_CHAT, "+77011234503", "ru")
    return World(a, b, admin_a.id, admin_b.id, auditor.id)


@pytest.fixture
async def world(ctx) -> World:
    """Built once per process (tests/worlds.py)."""
    return await built_once(ctx, _world)


@pytest.fixture
async def web_client(aiohttp_client, settings, ctx):
    return await aiohttp_client(create_app(settings, ctx=ctx, face_pool=FakeAnalyser()))


async def sign_in(client, ctx, chat_id: int, index: int = 0) -> str:
    """Ask for links as the bot does, open one, press "Sign in": the day page's CSRF token."""
    link = (await web_sessions.request_links(ctx, chat_id))[index]
    page = await client.get(f"/web/signin/{link.token}")
    assert page.status == 200
    proof = PROOF.search(await page.text()).group(1)
    signed = await client.post(f"/web/signin/{link.token}", data={"proof": proof}, allow_redirects=False)
    assert signed.status == 303, await signed.text()
    day = await client.get("/web/day")
    assert day.status == 200
    return CSRF.search(await day.text()).group(1)
