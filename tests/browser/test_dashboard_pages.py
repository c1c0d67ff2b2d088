"""The dashboard's disputes queue, scorecard and clinics pages in a real browser (Debian's chromium driven by
playwright) against the real server app on a real port: an admin reviews a dispute through the form and opens a
doctor's scorecard with its chart; an auditor sees the review and their clinics ranked by flags and downloads the
CSV. No console error, no CSP violation. Screenshots go to $RASTAU_SCREENSHOTS, else tests/browser/screenshots/."""
from __future__ import annotations

import csv
import datetime as dt
import os
from pathlib import Path

import pytest

from core.clock import ALMATY
from core.model import Visit, VisitMode, VisitState
from core.services import web_sessions
from core.services.visits import patient_disputes
from server.app import create_app
from tests.server.support import FakeAnalyser
from tests.web.conftest import ADMIN_A_CHAT, AUDITOR_CHAT, world  # noqa: F401  (the fixture)
from tests.web.test_dashboard import visit_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(os.environ.get("RASTAU_SCREENSHOTS") or Path(__file__).parent / "screenshots")
CSP_PROBE = ("document.addEventListener('securitypolicyviolation', e => "
             "(window.__csp = window.__csp || []).push(e.violatedDirective + ' ' + e.blockedURI));")
LAUNCH = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--no-first-run"]


async def month_of_visits(ctx, tenant) -> None:
    """Three weeks of the first doctor's days: mostly live camera checks, some codes, a visit with no evidence a
    day, a few patients saying no; weekends off. Stored as the repositories store them."""
    today = ctx.clock.now().astimezone(ALMATY).date()
    async with ctx.uow() as uow:
        for back in range(1, 22):
            day = today - dt.timedelta(days=back)
            if day.weekday() >= 5:
                continue
            for n in range(8 + back % 5):
                start = dt.datetime.combine(day, dt.time(9, 0), tzinfo=ALMATY) + dt.timedelta(minutes=25 * n)
                method = "code" if n % 4 == 3 else ("face" if n == 5 else None if n == 6 else "face_live")
                state = (VisitState.UNVERIFIED if method is None else VisitState.PATIENT_DISPUTED if n == 7
                         else VisitState.PATIENT_CONFIRMED if n % 3 else VisitState.VERIFIED)
                visit = Visit(id=None, clinic_id=tenant.clinic_id, doctor_id=tenant.doctor_id,
                              patient_id=tenant.patient_ids[n % 2], start=start.astimezone(dt.UTC),
                              duration=dt.timedelta(minutes=20), mode=VisitMode.IN_PERSON, service_code="A01.001",
                              state=state, verified_by=method,
                              verified_at=start + dt.timedelta(minutes=2) if method else None,
                              answered_at=start + dt.timedelta(hours=1) if state.value.startswith("patient") else None)
                await uow.visits.add(visit, start - dt.timedelta(days=1))
                await uow.visits.save(visit)
        await uow.commit()


@pytest.mark.skipif(not CHROMIUM.exists() and os.environ.get("CI") != "true",
                    reason="needs Debian's chromium (scripts/bootstrap installs it)")
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_an_admin_reviews_a_dispute_and_an_auditor_sees_it_and_the_clinics(ctx, world, aiohttp_server,  # noqa: F811
                                                                                  tmp_path):
    pytest.importorskip("playwright")
    from playwright.async_api import async_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    await month_of_visits(ctx, world.a)
    disputed = await visit_of(ctx, world.a, patient=1, start_in=dt.timedelta(minutes=-30))
    await patient_disputes(ctx, disputed.id, [world.a.patient_ids[1]], "Мен ол күні Алматыда болдым")
    server = await aiohttp_server(create_app(ctx.settings, ctx=ctx, face_pool=FakeAnalyser()))
    base = str(server.make_url("")).rstrip("/")
    errors: list[str] = []

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH)
        try:
            async def signed_in(chat_id: int):
                context = await browser.new_context(viewport={"width": 1200, "height": 800}, accept_downloads=True)
                await context.add_init_script(CSP_PROBE)
                page = await context.new_page()
                page.on("console", lambda m: errors.append(f"{m.type}: {m.text}") if m.type in ("error", "warning")
                        else None)
                page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
                link = (await web_sessions.request_links(ctx, chat_id))[0]
                await page.goto(f"{base}/web/signin/{link.token}")
                await page.click("#signin")
                await page.wait_for_url(f"{base}/web/day")
                return page

            async def shot(page, name: str) -> None:
                violations = await page.evaluate("window.__csp || []")
                assert not violations, f"{name}: CSP violations {violations}"
                await page.screenshot(path=str(SHOTS / f"dashboard-{name}.png"), full_page=True)

            # the admin (Kazakh) reviews the dispute through its form
            admin = await signed_in(ADMIN_A_CHAT)
            await admin.click("nav a[href='/web/disputes']")
            item = admin.locator(f"#dispute-visit-{disputed.id}")
            assert "Мен ол күні Алматыда болдым" in await item.inner_text()
            await shot(admin, "disputes")
            await item.locator("details.review-form summary").click()  # the form opens under its dispute
            await item.locator("input[name=outcome][value=needs_follow_up]").check()
            await item.locator("textarea[name=note]").fill("Пациентке қоңырау шалдым, дәрігерден түсініктеме сұрадым")
            await item.locator("button[type=submit]").click()
            await admin.wait_for_selector(f"#dispute-visit-{disputed.id} ul.reviews")
            reviewed = await admin.locator(f"#dispute-visit-{disputed.id}").inner_text()
            assert "әлі анықтау керек" in reviewed and "Пациентке қоңырау шалдым" in reviewed
            await shot(admin, "disputes-reviewed")

            # the doctor's scorecard from the doctors' list: flags, the chart, the table behind it
            await admin.click("nav a[href='/web/doctors']")
            await shot(admin, "doctors")
            await admin.click(f"#doctors a[href^='/web/doctors/{world.a.doctor_id}']")
            await admin.wait_for_selector("#chart svg[role=img]")
            chart = admin.locator("#chart svg")
            assert await chart.locator("rect[data-day]").count() > 40
            assert "Қалай расталды" in await chart.inner_html()  # the legend, in Kazakh
            box = await chart.bounding_box()
            assert box is not None and box["width"] > 600  # drawn at a readable size
            await admin.click("#days summary")
            assert await admin.locator("#days tbody tr").count() == 31  # 30 days and the total
            await shot(admin, "scorecard")

            # the auditor (Russian) sees the admin's review and ranks their clinics
            auditor = await signed_in(AUDITOR_CHAT)
            await auditor.click("nav a[href='/web/disputes']")
            assert "нужно выяснить" in await auditor.locator(f"#dispute-visit-{disputed.id}").inner_text()
            await auditor.click("nav a[href='/web/clinics']")
            rows = auditor.locator("#clinics tbody tr")
            assert await rows.count() == 1 and "Polyclinic A" in await rows.first.inner_text()
            await shot(auditor, "clinics")
            async with auditor.expect_download() as download_info:
                await auditor.click("#csv")
            download = await download_info.value
            saved = tmp_path / download.suggested_filename
            await download.save_as(saved)
            table = list(csv.reader(saved.open(encoding="utf-8-sig")))
            assert table[0][0] == "Место" and table[1][:3] == ["1", str(world.a.clinic_id), "Polyclinic A"]
        finally:
            await browser.close()
    assert errors == []
