"""The web dashboard in a real browser: Debian's chromium driven by playwright (executable_path, never `playwright
install`) against the real server app on a real port. Sign in by the bot's link, browse a day, filter (htmx and
the URL kept), open a visit's timeline, download the CSV and read it, switch language, another clinic's visit by
URL → 404, a form posted without its CSRF token → 403, sign out; the console shows no error and no CSP violation.
Screenshots of every page go to $RASTAU_SCREENSHOTS, else tests/browser/screenshots/ (git-ignored)."""
from __future__ import annotations

import csv
import datetime as dt
import os
from pathlib import Path

import pytest

from core.model import VisitMode
from core.services import web_sessions
from core.services.visits import close_expired_windows, patient_disputes
from server.app import create_app
from tests.server.support import FakeAnalyser
from tests.web.conftest import ADMIN_A_CHAT, world  # noqa: F401  (the fixture)
from tests.web.test_dashboard import verified_by_code, visit_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(os.environ.get("RASTAU_SCREENSHOTS") or Path(__file__).parent / "screenshots")
CSP_PROBE = ("document.addEventListener('securitypolicyviolation', e => "
             "(window.__csp = window.__csp || []).push(e.violatedDirective + ' ' + e.blockedURI));")


async def busy_day(ctx, w):
    """Clinic A's day: a visit verified by code, an online one with the second doctor, one disputed; clinic B's one."""
    disputed = await visit_of(ctx, w.a, patient=1, start_in=dt.timedelta(minutes=-120))
    await close_expired_windows(ctx)
    await patient_disputes(ctx, disputed.id, [w.a.patient_ids[1]])
    verified = await visit_of(ctx, w.a, start_in=dt.timedelta(minutes=5))
    await verified_by_code(ctx, w.a, verified)
    await visit_of(ctx, w.a, patient=1, start_in=dt.timedelta(hours=3), mode=VisitMode.ONLINE,
                   doctor_id=w.a.other_doctor_id)
    other = await visit_of(ctx, w.b)
    return verified, other


@pytest.mark.skipif(not CHROMIUM.exists() and os.environ.get("CI") != "true",
                    reason="needs Debian's chromium (scripts/bootstrap installs it)")
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_an_admin_uses_the_dashboard_in_a_browser(ctx, world, aiohttp_server, tmp_path):  # noqa: F811
    pytest.importorskip("playwright")
    from playwright.async_api import async_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    verified, other_clinics = await busy_day(ctx, world)
    server = await aiohttp_server(create_app(ctx.settings, ctx=ctx, face_pool=FakeAnalyser()))
    base = str(server.make_url("")).rstrip("/")
    link = (await web_sessions.request_links(ctx, ADMIN_A_CHAT))[0]
    errors: list[str] = []
    expected_failures: set[str] = set()

    def on_console(message) -> None:
        if message.type in ("error", "warning"):
            url = message.location.get("url", "")
            if not (message.text.startswith("Failed to load resource") and url in expected_failures):
                errors.append(f"{message.type}: {message.text} ({url})")

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            context = await browser.new_context(viewport={"width": 1200, "height": 800}, accept_downloads=True,
                                                locale="ru-RU")
            await context.add_init_script(CSP_PROBE)
            page = await context.new_page()
            page.on("console", on_console)
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))

            async def shot(name: str) -> None:
                violations = await page.evaluate("window.__csp || []")
                assert not violations, f"{name}: CSP violations {violations}"
                await page.screenshot(path=str(SHOTS / f"dashboard-{name}.png"), full_page=True)

            # sign in by the bot's link: the page only offers the button, the button signs in
            await page.goto(f"{base}/web/signin/{link.token}")
            await shot("signin")
            await page.click("#signin")
            await page.wait_for_url(f"{base}/web/day")
            rows = page.locator("table.visits tbody tr")
            assert await rows.count() == 3
            assert "Polyclinic A" in await page.inner_text("h1")
            await shot("day")

            # filter: htmx swaps the table and keeps the filter in the address
            await page.select_option("select[name=state]", "verified")
            await page.wait_for_url("**state=verified**")
            await page.wait_for_function("document.querySelectorAll('table.visits tbody tr').length === 1")
            assert "бір реттік код" in await rows.first.inner_text()  # the admin's chat speaks Kazakh
            await shot("day-filtered")

            # the CSV of what is shown
            async with page.expect_download() as download_info:
                await page.click("#csv")
            download = await download_info.value
            saved = tmp_path / download.suggested_filename
            await download.save_as(saved)
            table = list(csv.reader(saved.open(encoding="utf-8-sig")))
            assert [r[0] for r in table[1:]] == [str(verified.id)]
            assert table[0][0] == "Қабылдау" and table[1][6] == "расталған"

            # another day: the title follows the swap; "previous day" comes back with the filter kept
            await page.fill("input[name=day]", "2026-11-26")
            await page.wait_for_url("**day=2026-11-26**")
            await page.wait_for_function("document.getElementById('day-title').textContent.includes('26.11.2026')")
            assert await rows.count() == 0
            await page.click("text=← Алдыңғы күн")
            await page.wait_for_url("**day=2026-11-25**")
            assert await rows.count() == 1 and "state=verified" in page.url

            # a visit's timeline
            await page.click(f"a[href*='/web/visits/{verified.id}']")
            await page.wait_for_selector("#timeline")
            steps = await page.locator("#timeline li").all_inner_texts()
            assert steps[0].startswith("25.11.2026 09:00:00") and "Емхана тіркеді" in steps[0]
            assert any("Расталды" in s for s in steps)
            await shot("visit")

            # the language: switched, and the page says so
            await page.click("button[name=lang][value=ru]")
            await page.wait_for_selector("text=Ход приёма")
            await shot("visit-ru")

            # another clinic's visit by URL: 404, and nothing of it shown
            foreign = f"{base}/web/visits/{other_clinics.id}?clinic={world.b.clinic_id}"
            expected_failures.add(foreign)
            response = await page.goto(foreign)
            assert response.status == 404
            assert "Polyclinic B" not in await page.content()
            await shot("foreign-404")

            # a form posted without its CSRF token is refused (as another site's form would be)
            await page.goto(f"{base}/web/day")
            expected_failures.add(f"{base}/web/language")
            status = await page.evaluate("""async () => (await fetch('/web/language', {method: 'POST',
                headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'lang=kk'})).status""")
            assert status == 403
            assert "Приёмы за день" in await page.inner_text("h1")  # the refused form changed nothing
            await shot("day-ru")

            # sign out: back to the sign-in page, and the day is closed
            await page.click("#signout")
            await page.wait_for_url(f"{base}/web/signin?lang=ru")
            assert "Пароль не нужен" in await page.inner_text("main")
            await shot("signed-out")
            await page.goto(f"{base}/web/day")
            assert page.url == f"{base}/web/signin"
        finally:
            await browser.close()
    assert not errors, errors


@pytest.mark.skipif(not CHROMIUM.exists() and os.environ.get("CI") != "true",
                    reason="needs Debian's chromium (scripts/bootstrap installs it)")
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_dashboard_reads_and_filters_without_javascript(ctx, world, aiohttp_server):  # noqa: F811
    pytest.importorskip("playwright")
    from playwright.async_api import async_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    await busy_day(ctx, world)
    server = await aiohttp_server(create_app(ctx.settings, ctx=ctx, face_pool=FakeAnalyser()))
    base = str(server.make_url("")).rstrip("/")
    link = (await web_sessions.request_links(ctx, ADMIN_A_CHAT))[0]
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            context = await browser.new_context(viewport={"width": 1200, "height": 800}, java_script_enabled=False)
            page = await context.new_page()
            await page.goto(f"{base}/web/signin/{link.token}")
            await page.click("#signin")
            await page.wait_for_url(f"{base}/web/day")
            await page.select_option("select[name=mode]", "online")
            await page.click(".filters button[type=submit]")  # no htmx: the form's own GET
            await page.wait_for_url("**mode=online**")
            assert await page.locator("table.visits tbody tr").count() == 1
            await page.screenshot(path=str(SHOTS / "dashboard-day-no-js.png"), full_page=True)
        finally:
            await browser.close()
