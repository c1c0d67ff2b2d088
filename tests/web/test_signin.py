"""Signing in to the dashboard by the bot's one-time link, and what a session may not do."""
from __future__ import annotations

from core.services import web_sessions
from tests.web.conftest import ADMIN_A_CHAT, PROOF


async def test_a_link_signs_in_once_and_the_day_page_is_private(web_client, ctx, world):
    link = (await web_sessions.request_links(ctx, ADMIN_A_CHAT))[0]
    page = await web_client.get(f"/web/signin/{link.token}")
    proof = PROOF.search(await page.text()).group(1)
    first = await web_client.post(f"/web/signin/{link.token}", data={"proof": proof}, allow_redirects=False)
    assert first.status == 303
    cookie = first.cookies["rastau_web"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/web"
    day = await web_client.get("/web/day")
    assert day.status == 200
    assert "Polyclinic A" in await day.text()
    assert day.headers["Cache-Control"] == "no-store"
    assert "script-src 'self'" in day.headers["Content-Security-Policy"]
    assert day.headers["X-Frame-Options"] == "DENY"
    again = await web_client.post(f"/web/signin/{link.token}", data={"proof": proof}, allow_redirects=False)
    assert again.status == 403


async def test_a_chat_apps_preview_of_the_link_spends_nothing(web_client, ctx, world):
    link = (await web_sessions.request_links(ctx, ADMIN_A_CHAT))[0]
    for _ in range(3):  # Telegram's or a scanner's fetches of the link: GETs without the sign-in page's cookie
        async with web_client.get(f"/web/signin/{link.token}") as preview:
            assert preview.status == 200 and "rastau_web" not in preview.cookies
    web_client.session.cookie_jar.clear()
    page = await web_client.get(f"/web/signin/{link.token}")
    proof = PROOF.search(await page.text()).group(1)
    signed = await web_client.post(f"/web/signin/{link.token}", data={"proof": proof}, allow_redirects=False)
    assert signed.status == 303 and "rastau_web" in signed.cookies


async def test_the_dashboard_address_as_typed_leads_to_sign_in(web_client, world):
    for path in ("/web", "/web/"):
        response = await web_client.get(path)
        assert response.url.path == "/web/signin", path
    assert (await web_client.get("/web/nope")).status == 404
