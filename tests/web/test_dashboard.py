"""The dashboard in-process on both databases: what each user may read, the day page, its CSV, a visit's timeline,
the language, and the attacks a dishonest clinic or a stolen link would try."""
from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import re

import pytest

from core.errors import NotFound
from core.model import Language, VisitMode
from core.services import auditors, codes, registry, visits, web_day, web_sessions
from core.services.chat import link_chat_by_phone, stop_chat
from tests.web.conftest import ADMIN_A_CHAT, ADMIN_B_CHAT, AUDITOR_CHAT, CSRF, PROOF, sign_in


async def visit_of(ctx, tenant, *, patient=0, start_in=dt.timedelta(minutes=5), mode=VisitMode.IN_PERSON,
                   doctor_id=None):
    return await visits.register_visit(
        ctx, clinic_id=tenant.clinic_id, doctor_id=doctor_id or tenant.doctor_id,
        patient_id=tenant.patient_ids[patient], start=ctx.clock.now() + start_in,
        duration=dt.timedelta(minutes=20), mode=mode, service_code="A01.001")


async def verified_by_code(ctx, tenant, visit):
    issued = await codes.issue_code(ctx, visit.id)
    assert (await codes.verify_code(ctx, tenant.clinic_id, visit.id, issued.code)).outcome.value == "verified"
    return issued


def rows_of(html: str) -> list[str]:
    return re.findall(r'<tr class="state-[a-z_]+">(.*?)</tr>', html, re.S)


async def test_another_clinics_day_visit_and_csv_answer_404(web_client, ctx, world):
    visit_a = await visit_of(ctx, world.a)
    await sign_in(web_client, ctx, ADMIN_B_CHAT)
    for url in (f"/web/day?clinic={world.a.clinic_id}", f"/web/day.csv?clinic={world.a.clinic_id}",
                f"/web/visits/{visit_a.id}", f"/web/visits/{visit_a.id}?clinic={world.a.clinic_id}"):
        response = await web_client.get(url)
        assert response.status == 404, url
        assert "Polyclinic A" not in await response.text()
    own = await web_client.get("/web/day")
    assert "Polyclinic B" in await own.text() and "Polyclinic A" not in await own.text()


async def test_an_auditor_reads_only_the_clinics_of_their_scope(web_client, ctx, world):
    visit_a = await visit_of(ctx, world.a)
    visit_b = await visit_of(ctx, world.b)
    await sign_in(web_client, ctx, AUDITOR_CHAT)
    assert (await web_client.get(f"/web/visits/{visit_a.id}?clinic={world.a.clinic_id}")).status == 200
    assert (await web_client.get(f"/web/visits/{visit_b.id}?clinic={world.b.clinic_id}")).status == 404
    assert (await web_client.get(f"/web/day?clinic={world.b.clinic_id}")).status == 404


async def test_the_day_shows_evidence_filters_and_downloads_the_same_rows(web_client, ctx, world):
    verified = await visit_of(ctx, world.a, start_in=dt.timedelta(minutes=5))
    await verified_by_code(ctx, world.a, verified)
    await visit_of(ctx, world.a, patient=1, start_in=dt.timedelta(hours=2), mode=VisitMode.ONLINE,
                   doctor_id=world.a.other_doctor_id)
    await visit_of(ctx, world.a, start_in=dt.timedelta(days=1))  # tomorrow: not on today's page
    await sign_in(web_client, ctx, ADMIN_A_CHAT)
    day = await (await web_client.get("/web/day")).text()
    assert len(rows_of(day)) == 2
    assert "09:05" in day  # 04:05 UTC shown in Asia/Almaty
    only_verified = await (await web_client.get("/web/day?state=verified")).text()
    (row,) = rows_of(only_verified)
    assert "одноразовый код" in row or "бір реттік код" in row  # the method, in the user's language
    online = await (await web_client.get(f"/web/day?mode=online&doctor={world.a.other_doctor_id}")).text()
    assert len(rows_of(online)) == 1 and "Doctor Two" in rows_of(online)[0]
    response = await web_client.get("/web/day.csv?state=verified")
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert response.headers["Cache-Control"] == "no-store"
    table = list(csv.reader(io.StringIO((await response.read()).decode("utf-8-sig"))))
    assert len(table) == 2 and table[1][0] == str(verified.id) and table[1][1].endswith("09:05:00")
    assert (await web_client.get("/web/day?day=2026-13-40")).status == 400
    assert (await web_client.get("/web/day?state=burned")).status == 400


async def test_names_from_the_clinic_system_are_escaped_in_pages_and_csv(web_client, ctx, world):
    patient = (await registry.upsert_patient(ctx, world.a.clinic_id, "021231500015", "=HYPERLINK(1) <script>x",
                                             "+77051112233", "ru")).patient
    world.a.patient_ids.append(patient.id)
    await visit_of(ctx, world.a, patient=len(world.a.patient_ids) - 1)
    await sign_in(web_client, ctx, ADMIN_A_CHAT)
    page = await (await web_client.get("/web/day")).text()
    assert "<script>x" not in page and "&lt;script&gt;x" in page
    table = list(csv.reader(io.StringIO((await (await web_client.get("/web/day.csv")).read()).decode("utf-8-sig"))))
    assert table[1][3].startswith("'=HYPERLINK")


async def test_a_visits_timeline_in_almaty_time(web_client, ctx, world, clock):
    visit = await visit_of(ctx, world.a)
    clock.advance(dt.timedelta(minutes=2))
    await verified_by_code(ctx, world.a, visit)
    await sign_in(web_client, ctx, ADMIN_A_CHAT)
    page = await (await web_client.get(f"/web/visits/{visit.id}")).text()
    steps = re.findall(r'<li class="step-([a-z_]+)"><time>([^<]+)</time>', page)
    assert [s for s, _ in steps] == ["registered", "code_issued", "verified"]
    assert steps[0][1] == "25.11.2026 09:00:00" and steps[2][1] == "25.11.2026 09:02:00"


async def test_a_form_without_its_csrf_token_is_refused(web_client, ctx, world):
    token = await sign_in(web_client, ctx, ADMIN_A_CHAT)
    for data in ({"lang": "kk"}, {"lang": "kk", "csrf": "0" * 64}):
        refused = await web_client.post("/web/language", data=data, allow_redirects=False)
        assert refused.status == 403
    assert (await web_client.post("/web/signout", data={}, allow_redirects=False)).status == 403
    assert (await web_client.get("/web/day")).status == 200  # still signed in: the forged sign-out did nothing
    ok = await web_client.post("/web/language", data={"lang": "kk", "csrf": token}, allow_redirects=False)
    assert ok.status == 303


async def test_the_language_is_remembered_for_the_next_sign_in(web_client, ctx, world):
    token = await sign_in(web_client, ctx, ADMIN_B_CHAT)  # the chat chose ru
    assert "Приёмы за день" in await (await web_client.get("/web/day")).text()
    await web_client.post("/web/language", data={"lang": "kk", "csrf": token, "next": "/web/day"})
    assert "Күндегі қабылдаулар" in await (await web_client.get("/web/day")).text()
    kk_token = CSRF.search(await (await web_client.get("/web/day")).text()).group(1)
    await web_client.post("/web/signout", data={"csrf": kk_token})
    await sign_in(web_client, ctx, ADMIN_B_CHAT)
    assert "Күндегі қабылдаулар" in await (await web_client.get("/web/day")).text()


async def test_the_language_form_redirects_only_within_the_dashboard(web_client, ctx, world):
    token = await sign_in(web_client, ctx, ADMIN_A_CHAT)
    for target in ("https://evil.example/", "//evil.example/web/", "/web//evil.example", "/api/v1/visits"):
        response = await web_client.post("/web/language", data={"lang": "ru", "csrf": token, "next": target},
                                         allow_redirects=False)
        assert response.headers["Location"] == "/web/day", target


async def test_signing_out_ends_the_session_on_the_server(web_client, ctx, world):
    token = await sign_in(web_client, ctx, ADMIN_A_CHAT)
    cookie = web_client.session.cookie_jar.filter_cookies(web_client.make_url("/web/day"))["rastau_web"].value
    await web_client.post("/web/signout", data={"csrf": token})
    web_client.session.cookie_jar.clear()
    replayed = await web_client.get("/web/day", headers={"Cookie": f"rastau_web={cookie}"}, allow_redirects=False)
    assert replayed.status == 303 and replayed.headers["Location"] == "/web/signin"


async def test_a_session_ends_when_the_auditor_is_removed_or_the_admin_leaves_the_chat(web_client, ctx, world,
                                                                                      aiohttp_client, settings):
    await sign_in(web_client, ctx, AUDITOR_CHAT)
    await auditors.remove_auditor(ctx, world.auditor)
    assert (await web_client.get("/web/day", allow_redirects=False)).status == 303
    web_client.session.cookie_jar.clear()
    await sign_in(web_client, ctx, ADMIN_A_CHAT)
    await stop_chat(ctx, ADMIN_A_CHAT)
    assert (await web_client.get("/web/day", allow_redirects=False)).status == 303
    web_client.session.cookie_jar.clear()
    await link_chat_by_phone(ctx, ADMIN_A_CHAT, "+77011234501", "kk")
    await sign_in(web_client, ctx, ADMIN_A_CHAT)
    await link_chat_by_phone(ctx, 9999, "+77011234501", "kk")  # the admin's phone now speaks from another chat
    assert (await web_client.get("/web/day", allow_redirects=False)).status == 303


async def test_a_link_expires_and_is_spent_only_by_its_own_form(web_client, ctx, world, clock):
    link = (await web_sessions.request_links(ctx, ADMIN_A_CHAT))[0]
    # another site posting the link into the browser (no cookie from the sign-in page): refused, link not spent
    forged = await web_client.post(f"/web/signin/{link.token}", data={"proof": "0" * 64}, allow_redirects=False)
    assert forged.status == 403
    page = await web_client.get(f"/web/signin/{link.token}")
    proof = PROOF.search(await page.text()).group(1)
    clock.advance(dt.timedelta(minutes=ctx.settings.web_link_minutes, seconds=1))
    late = await web_client.post(f"/web/signin/{link.token}", data={"proof": proof}, allow_redirects=False)
    assert late.status == 403 and "rastau_web" not in late.cookies


async def test_links_are_rate_limited_per_chat_and_only_for_admins_and_auditors(ctx, world):
    for _ in range(ctx.settings.web_links_per_hour):
        await web_sessions.request_links(ctx, ADMIN_A_CHAT)
    with pytest.raises(web_sessions.TooManyLinks):
        await web_sessions.request_links(ctx, ADMIN_A_CHAT)
    await web_sessions.request_links(ctx, ADMIN_B_CHAT)  # another chat is not held back
    with pytest.raises(web_sessions.NotDashboardUser):
        await web_sessions.request_links(ctx, 424242)


async def test_tokens_are_stored_only_as_hashes(ctx, world, engine):
    from sqlalchemy import text

    link = (await web_sessions.request_links(ctx, ADMIN_A_CHAT))[0]
    session = await web_sessions.open_link(ctx, link.token)
    async with engine.connect() as conn:
        stored = [tuple(r) for r in (await conn.execute(text(
            "SELECT token_hash FROM web_links UNION ALL SELECT token_hash FROM web_sessions"))).all()]
    dump = repr(stored)
    assert link.token not in dump and session not in dump and web_sessions.token_hash(link.token) in dump


async def test_one_link_per_role_and_each_opens_only_its_own_clinic(ctx, world):
    # the same phone is admin of clinic B too: two links, each reading only its clinic
    await registry.add_admin(ctx, world.b.clinic_id, "Aigerim Admin", "+77011234501")
    await link_chat_by_phone(ctx, ADMIN_A_CHAT, "+77011234501", "kk")
    links = await web_sessions.request_links(ctx, ADMIN_A_CHAT)
    assert sorted(link.label for link in links) == ["Polyclinic A", "Polyclinic B"]
    for link in links:
        user = await web_sessions.session_user(ctx, await web_sessions.open_link(ctx, link.token))
        other = world.b.clinic_id if link.label == "Polyclinic A" else world.a.clinic_id
        with pytest.raises(NotFound):
            await web_day.clinic_for(ctx, user, other)


async def test_secure_cookie_when_the_public_address_is_https(aiohttp_client, ctx, world, settings):
    from server.app import create_app
    from tests.server.support import FakeAnalyser

    client = await aiohttp_client(create_app(settings.model_copy(update={"public_url": "https://rastau.example.kz"}),
                                             ctx=ctx, face_pool=FakeAnalyser()))
    link = (await web_sessions.request_links(ctx, ADMIN_A_CHAT))[0]
    page = await client.get(f"/web/signin/{link.token}")
    assert page.cookies["rastau_signin"]["secure"]
    proof = PROOF.search(await page.text()).group(1)
    signed = await client.post(f"/web/signin/{link.token}", data={"proof": proof},
                               headers={"Cookie": f"rastau_signin={page.cookies['rastau_signin'].value}"},
                               allow_redirects=False)
    assert signed.cookies["rastau_web"]["secure"]


async def test_the_timeline_shows_the_code_and_the_question_as_sent(web_client, ctx, world, engine, clock):
    from core.db import tables as t

    visit = await visit_of(ctx, world.a)
    sent = {"visit_code": minutes_after(clock, 1), "attendance_prompt": minutes_after(clock, 90)}
    async with engine.begin() as conn:
        for kind, at in sent.items():
            await conn.execute(t.outbox.insert().values(
                created_at=clock.now(), due_at=at, kind=kind, recipient_kind="patient",
                recipient_id=world.a.patient_ids[0], visit_id=visit.id, payload="{}", status="sent", sent_at=at))
        await conn.execute(t.outbox.insert().values(  # never sent: not on the timeline
            created_at=clock.now(), due_at=clock.now(), kind="attendance_prompt", recipient_kind="patient",
            recipient_id=world.a.patient_ids[0], visit_id=visit.id, payload="{}", status="pending"))
    await sign_in(web_client, ctx, ADMIN_A_CHAT)
    page = await (await web_client.get(f"/web/visits/{visit.id}")).text()
    steps = re.findall(r'<li class="step-([a-z_]+)"><time>([^<]+)</time>', page)
    assert steps == [("registered", "25.11.2026 09:00:00"), ("code_sent", "25.11.2026 09:01:00"),
                     ("asked", "25.11.2026 10:30:00")]


def minutes_after(clock, minutes: int) -> dt.datetime:
    return clock.now() + dt.timedelta(minutes=minutes)


async def test_an_api_key_opens_no_web_page(web_client, ctx, world):
    response = await web_client.get("/web/day", headers={"Authorization": f"Bearer {world.a.keys['admin']}"},
                                    allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/web/signin"


async def test_an_auditor_of_every_clinic_chooses_among_them(web_client, ctx, world):
    await auditors.add_auditor(ctx, "Global Auditor", "+77011234504", all_clinics=True)
    await link_chat_by_phone(ctx, 5004, "+77011234504", "ru")
    await sign_in(web_client, ctx, 5004)
    page = await (await web_client.get(f"/web/day?clinic={world.b.clinic_id}")).text()
    assert "Polyclinic B" in re.search(r"<h1[^>]*>(.*?)</h1>", page, re.S).group(1)
    assert re.findall(r'<option value="(\d+)"[^>]*>Polyclinic', page) == [str(world.a.clinic_id),
                                                                         str(world.b.clinic_id)]


def test_htmx_is_the_pinned_file():
    import hashlib
    from pathlib import Path

    vendored = Path(__file__).resolve().parents[2] / "server" / "static" / "vendor"
    assert hashlib.sha256((vendored / "htmx.min.js").read_bytes()).hexdigest() == HTMX_SHA256
    assert (vendored / "htmx.LICENSE").read_text().startswith("Zero-Clause BSD")


HTMX_SHA256 = "e209dda5c8235479f3166defc7750e1dbcd5a5c1808b7792fc2e6733768fb447"  # htmx.org 2.0.4, dist/htmx.min.js


async def test_two_browsers_racing_with_one_link_get_one_session(ctx, world):
    link = (await web_sessions.request_links(ctx, ADMIN_A_CHAT))[0]
    opened = await asyncio.gather(*(web_sessions.open_link(ctx, link.token) for _ in range(4)))
    assert sum(token is not None for token in opened) == 1


async def test_a_session_ends_when_its_hours_are_over(web_client, ctx, world, clock):
    await sign_in(web_client, ctx, ADMIN_A_CHAT)
    clock.advance(dt.timedelta(hours=ctx.settings.web_session_hours, seconds=-1))
    assert (await web_client.get("/web/day", allow_redirects=False)).status == 200
    clock.advance(dt.timedelta(seconds=1))
    assert (await web_client.get("/web/day", allow_redirects=False)).status == 303


async def test_an_auditors_reads_are_rows_of_the_clinics_audit_chain_and_an_admins_are_not(web_client, ctx, world):
    from core import audit

    visit = await visit_of(ctx, world.a)
    await sign_in(web_client, ctx, ADMIN_A_CHAT)
    await web_client.get("/web/day")
    web_client.session.cookie_jar.clear()
    await sign_in(web_client, ctx, AUDITOR_CHAT)  # its own sign_in already read the day once
    await web_client.get(f"/web/day.csv?clinic={world.a.clinic_id}&state=scheduled")
    await web_client.get(f"/web/visits/{visit.id}?clinic={world.a.clinic_id}")
    async with ctx.uow(read_only=True) as uow:
        rows = await uow.audit.records(audit.chain_of(world.a.clinic_id))
    reads = [r for r in rows if r.action == "auditor.web_read"]
    assert [r.details["page"] for r in reads] == ["day", "day.csv", "visit"]
    assert all(r.actor == f"auditor:{world.auditor}:web" for r in reads)
    assert reads[1].details["state"] == "scheduled" and reads[1].details["visits"] == 1
    assert reads[2].details["visit"] == visit.id


async def test_every_dashboard_route_but_sign_in_needs_a_session(web_client, world):
    """Walks the web sub-application's route table, so a page added later without the session check fails here."""
    from server.web.app import ANONYMOUS_ATTR, PREFIX, create_web_app

    samples = {"token": "a" * 43, "name": "web.css", "kind": "visit"}
    checked = 0
    for route in create_web_app().router.routes():
        if getattr(route.handler, ANONYMOUS_ATTR, False) or route.method == "HEAD":
            continue
        path = PREFIX + re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda m: samples.get(m.group(1), "1"),
                               route.resource.canonical)
        response = await web_client.request(route.method, path, allow_redirects=False)
        if route.method == "GET":
            assert (response.status, response.headers.get("Location")) == (303, "/web/signin"), path
        else:
            assert response.status == 403, path
        checked += 1
    assert checked >= 6


async def test_old_links_and_sessions_are_forgotten_but_the_language_is_not(ctx, world, clock, engine):
    from sqlalchemy import text

    for _ in range(2):  # two sign-ins: the second chooses Kazakh
        link = (await web_sessions.request_links(ctx, ADMIN_B_CHAT))[0]
        user = await web_sessions.session_user(ctx, await web_sessions.open_link(ctx, link.token))
    await web_sessions.set_language(ctx, user, Language.KK)
    clock.advance(web_sessions.SESSIONS_KEPT + dt.timedelta(days=1))
    fresh = (await web_sessions.request_links(ctx, ADMIN_B_CHAT))[0]  # asking prunes
    async with engine.connect() as conn:
        links = (await conn.execute(text("SELECT count(*) FROM web_links"))).scalar_one()
        sessions = (await conn.execute(text("SELECT count(*) FROM web_sessions"))).scalar_one()
    assert (links, sessions) == (1, 1)  # the fresh link; of the sessions, the newest, which holds the language
    user = await web_sessions.session_user(ctx, await web_sessions.open_link(ctx, fresh.token))
    assert user.language is Language.KK
