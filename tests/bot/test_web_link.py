"""/web in the chat: a clinic admin or an auditor gets one-time sign-in links to the dashboard (issue 13), which
open a session on the real server app; a patient, or a server without its public address, gets none. The real
aiogram Bot against the Bot API stand-in, on SQLite and PostgreSQL."""
from __future__ import annotations

import re

from core.services import auditors
from server.app import create_app
from tests.bot.support import User, last_to, link
from tests.server.support import FakeAnalyser

LINK = re.compile(r"(https://rastau\.example\.kz)(/web/signin/[A-Za-z0-9_-]{43})")


async def test_an_admin_gets_a_link_that_signs_in_once(ctx, clinic_world, world, standin, aiohttp_client):
    w = clinic_world
    admin, patient = User(8101), User(8102)
    await link(world, admin, w.admin.phone, "kk")
    await link(world, patient, w.p2.phone, "ru")
    await world.send(admin, "/help")
    assert "/web" in last_to(standin, admin.id).text
    await world.send(patient, "/help")
    assert "/web" not in last_to(standin, patient.id).text
    await world.send(admin, "/web")
    assert "мекенжайы әлі бапталмаған" in last_to(standin, admin.id).text  # no RASTAU_PUBLIC_URL: no link
    ctx.settings = ctx.settings.model_copy(update={"public_url": "https://rastau.example.kz"})
    await world.send(admin, "/web")
    answer = last_to(standin, admin.id).text
    assert "бір рет" in answer and "Emhana No. 5" in answer
    (found,) = LINK.findall(answer)
    await world.send(patient, "/web")
    assert "только для администраторов" in last_to(standin, patient.id).text
    assert not LINK.search(last_to(standin, patient.id).text)

    client = await aiohttp_client(create_app(ctx.settings, ctx=ctx, face_pool=FakeAnalyser()))
    page = await client.get(found[1])
    proof = re.search(r'name="proof" value="([0-9a-f]{64})"', await page.text()).group(1)
    nonce = {"Cookie": f"rastau_signin={page.cookies['rastau_signin'].value}"}  # Secure: the client is on http
    signed = await client.post(found[1], data={"proof": proof}, headers=nonce, allow_redirects=False)
    assert signed.status == 303
    day = await client.get("/web/day", headers={"Cookie": f"rastau_web={signed.cookies['rastau_web'].value}"})
    assert "Emhana No. 5" in await day.text()
    assert (await client.post(found[1], data={"proof": proof}, headers=nonce, allow_redirects=False)).status == 403


async def test_an_auditor_gets_a_link_and_too_many_requests_are_refused(ctx, clinic_world, world, standin):
    ctx.settings = ctx.settings.model_copy(update={"public_url": "https://rastau.example.kz", "web_links_per_hour": 2})
    await auditors.add_auditor(ctx, "Fund Auditor", "+7 707 100 20 40", clinic_ids=[clinic_world.clinic.id])
    auditor = User(8103)
    await link(world, auditor, "+7 707 100 20 40", "ru")
    for _ in range(2):
        await world.send(auditor, "/web")
        assert "Как аудитор" in last_to(standin, auditor.id).text and LINK.search(last_to(standin, auditor.id).text)
    await world.send(auditor, "/web")
    assert "слишком много ссылок" in last_to(standin, auditor.id).text
