"""The dashboard's disputes queue, doctors, scorecard and clinics pages in-process on both databases: a review through
the form, the chart and its text alternative, the auditor's ranking, their CSV files, and what a dishonest clinic
tries through them (another clinic's dispute or doctor, a forged form, a formula in a patient's words)."""
from __future__ import annotations

import csv
import datetime as dt
import io
import re
import xml.etree.ElementTree as ET

from sqlalchemy import func, select

from core.db import tables as t
from core.model import VisitMode
from core.services import visits
from tests.web.conftest import ADMIN_A_CHAT, ADMIN_B_CHAT, AUDITOR_CHAT, sign_in

SVG = re.compile(r"<svg .*?</svg>", re.S)


async def disputed(ctx, tenant, reason: str | None = "I was at work", *, patient: int = 0,
                   start_in: dt.timedelta = dt.timedelta(minutes=5)) -> int:
    visit = await visits.register_visit(ctx, clinic_id=tenant.clinic_id, doctor_id=tenant.doctor_id,
                                        patient_id=tenant.patient_ids[patient], start=ctx.clock.now() + start_in,
                                        duration=dt.timedelta(minutes=20), mode=VisitMode.IN_PERSON,
                                        service_code="A01.001")
    await visits.patient_disputes(ctx, visit.id, [tenant.patient_ids[patient]], reason)
    return visit.id


async def reviews_written(ctx) -> tuple[int, int]:
    async with ctx.uow(read_only=True) as uow:
        rows = (await uow.conn.execute(select(func.count()).select_from(t.dispute_reviews))).scalar_one()
        audit = (await uow.conn.execute(select(func.count()).select_from(t.audit_log).where(
            t.audit_log.c.action == "dispute.review"))).scalar_one()
    return rows, audit


async def test_an_admin_reviews_a_dispute_through_the_form_and_it_stays_in_the_queue(web_client, ctx, world):
    visit_id = await disputed(ctx, world.a)
    token = await sign_in(web_client, ctx, ADMIN_A_CHAT)  # this chat reads Kazakh
    page = await (await web_client.get("/web/disputes")).text()
    assert "Даулар" in page and "I was at work" in page and f'id="dispute-visit-{visit_id}"' in page
    assert "тексерілмеген" in page  # not reviewed yet
    answer = await web_client.post(f"/web/disputes/visit/{visit_id}/review", allow_redirects=False,
                                   data={"csrf": token, "outcome": "needs_follow_up", "note": "Called the patient"})
    assert answer.status == 303 and answer.headers["Location"].endswith(f"#dispute-visit-{visit_id}")
    page = await (await web_client.get("/web/disputes")).text()
    assert "Called the patient" in page and "әлі анықтау керек" in page  # the outcome, in Kazakh
    assert f'id="dispute-visit-{visit_id}"' in page  # still in the queue: a review removes nothing
    assert await reviews_written(ctx) == (1, 1)


async def test_a_review_without_its_csrf_token_or_with_a_bad_note_writes_nothing(web_client, ctx, world):
    visit_id = await disputed(ctx, world.a)
    token = await sign_in(web_client, ctx, ADMIN_A_CHAT)
    url = f"/web/disputes/visit/{visit_id}/review"
    for data in ({"outcome": "rejected"}, {"outcome": "rejected", "csrf": "0" * 64}):
        assert (await web_client.post(url, data=data, allow_redirects=False)).status == 403
    too_long = await web_client.post(url, data={"csrf": token, "outcome": "rejected", "note": "x" * 2001})
    assert too_long.status == 400 and "2 000 таңбадан" in await too_long.text()
    unknown = await web_client.post(url, data={"csrf": token, "outcome": "cleared"})
    assert unknown.status == 400 and "шешімдердің бірін" in await unknown.text()
    assert await reviews_written(ctx) == (0, 0)


async def test_a_dishonest_admin_neither_sees_nor_reviews_another_clinics_dispute(web_client, ctx, world):
    visit_a = await disputed(ctx, world.a, "=HYPERLINK(\"http://evil\",\"x\")")
    token = await sign_in(web_client, ctx, ADMIN_B_CHAT)
    page = await (await web_client.get("/web/disputes")).text()
    assert f"dispute-visit-{visit_a}" not in page and "HYPERLINK" not in page
    assert (await (await web_client.get("/web/disputes.csv")).read()).decode("utf-8-sig").count("\n") == 1  # header
    assert (await web_client.get(f"/web/disputes?clinic={world.a.clinic_id}")).status == 404
    forged = await web_client.post(f"/web/disputes/visit/{visit_a}/review", allow_redirects=False,
                                   data={"csrf": token, "outcome": "rejected", "note": "nothing happened"})
    assert forged.status == 404
    assert await reviews_written(ctx) == (0, 0)


async def test_the_auditor_sees_the_admins_review_and_the_csv_keeps_words_as_text(web_client, ctx, world):
    visit_id = await disputed(ctx, world.a, "=HYPERLINK(\"http://evil\",\"x\")")
    await disputed(ctx, world.b)  # outside the auditor's scope
    token = await sign_in(web_client, ctx, ADMIN_A_CHAT)
    await web_client.post(f"/web/disputes/visit/{visit_id}/review",
                          data={"csrf": token, "outcome": "upheld", "note": "Doctor was on leave"})
    await web_client.post("/web/signout", data={"csrf": token})
    await sign_in(web_client, ctx, AUDITOR_CHAT)  # ru
    page = await (await web_client.get("/web/disputes")).text()
    assert "Doctor was on leave" in page and "пациент прав" in page and "Polyclinic A" in page
    assert "Polyclinic B" not in page
    body = (await (await web_client.get("/web/disputes.csv")).read()).decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(body)))
    assert rows[0][:3] == ["Спор", "Номер", "Поликлиника"]
    (row,) = rows[1:]
    assert row[1] == str(visit_id) and row[9] == "'=HYPERLINK(\"http://evil\",\"x\")"
    assert row[-4:] == ["пациент прав", "Doctor was on leave", "", ""]  # the clinic's outcome; none by an auditor


async def test_a_scorecard_with_its_chart_and_table_and_no_other_clinics_doctor(web_client, ctx, world, clock):
    await disputed(ctx, world.a)
    await sign_in(web_client, ctx, ADMIN_A_CHAT)
    doctors = await web_client.get("/web/doctors")
    assert doctors.status == 200 and f"/web/doctors/{world.a.doctor_id}?day=" in await doctors.text()
    card = await web_client.get(f"/web/doctors/{world.a.doctor_id}")
    page = await card.text()
    assert card.status == 200 and "Дәрігерлер тізіміне оралу" in page
    svg = ET.fromstring(SVG.search(page).group(0))
    assert svg.get("role") == "img"
    title_id, desc_id = svg.get("aria-labelledby").split()
    title = next(e for e in svg.iter() if e.get("id") == title_id).text
    desc = next(e for e in svg.iter() if e.get("id") == desc_id).text
    assert title.startswith("Doctor One · ") and title.endswith(".2026")  # the doctor and the period
    assert desc.startswith("30 күнде 1 қабылдау") and "«болған жоқпын» деп 1" in desc
    today = clock.now().astimezone(dt.timezone(dt.timedelta(hours=5))).date()
    parts = [r for r in svg.iter("{http://www.w3.org/2000/svg}rect") if r.get("data-day") == today.isoformat()]
    assert {(r.get("class"), r.get("data-count")) for r in parts} == {("seg-unverified", "1"), ("seg-disputed", "1")}
    assert 'id="days"' in page and today.strftime("%d.%m.%Y") in page  # the table beside the chart
    days = (await (await web_client.get(f"/web/doctors/{world.a.doctor_id}/days.csv")).read()).decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(days)))
    assert rows[0][:2] == ["Күн", "Қабылдаулар"] and len(rows) == 31 and rows[-1][:2] == [today.isoformat(), "1"]
    for url in (f"/web/doctors/{world.b.doctor_id}", f"/web/doctors/{world.b.doctor_id}/days.csv",
                f"/web/doctors/{world.b.doctor_id}/flags.csv", f"/web/doctors?clinic={world.b.clinic_id}"):
        assert (await web_client.get(url)).status == 404, url


async def test_the_auditors_clinics_ranked_and_admins_have_no_such_page(web_client, ctx, world):
    token = await sign_in(web_client, ctx, ADMIN_A_CHAT)
    day = await (await web_client.get("/web/day")).text()
    assert "/web/clinics" not in day and "/web/disputes" in day  # the admin's menu
    assert (await web_client.get("/web/clinics", allow_redirects=False)).status == 303
    await web_client.post("/web/signout", data={"csrf": token})
    await sign_in(web_client, ctx, AUDITOR_CHAT)
    page = await (await web_client.get("/web/clinics")).text()
    assert 'href="/web/clinics"' in page and "Polyclinic A" in page and "Polyclinic B" not in page
    body = (await (await web_client.get("/web/clinics.csv")).read()).decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(body)))
    assert rows[0][:3] == ["Место", "Номер", "Имя или название"]
    assert [(r[0], r[1], r[2]) for r in rows[1:]] == [("1", str(world.a.clinic_id), "Polyclinic A")]


async def test_the_queue_hides_the_reviewed_on_request_and_odd_addresses_answer_404_or_400(web_client, ctx, world):
    first, second = await disputed(ctx, world.a), await disputed(ctx, world.a, patient=1)
    token = await sign_in(web_client, ctx, AUDITOR_CHAT)
    await web_client.post(f"/web/disputes/visit/{first}/review", data={"csrf": token, "outcome": "upheld"})
    page = await (await web_client.get("/web/disputes?open=1")).text()
    assert f"dispute-visit-{second}" in page and f"dispute-visit-{first}" not in page
    assert "Споров: 2 · ещё не проверено: 1" in " ".join(page.split())
    for url, status in (("/web/doctors/99999999999", 404), ("/web/doctors/2147483648/days.csv", 404),
                        ("/web/disputes?clinic=99999999999", 400), ("/web/disputes?after=1.visit.99999999999", 400),
                        ("/web/disputes?after=nonsense", 400), ("/web/clinics?day=yesterday", 400)):
        assert (await web_client.get(url)).status == status, url
    too_big = await web_client.post("/web/disputes/visit/99999999999/review", data={"csrf": token, "outcome": "upheld"})
    assert too_big.status == 404


async def test_a_clinic_reviewing_again_does_not_bury_the_auditors_outcome(web_client, ctx, world):
    visit_id = await disputed(ctx, world.a)
    token = await sign_in(web_client, ctx, AUDITOR_CHAT)
    await web_client.post(f"/web/disputes/visit/{visit_id}/review",
                          data={"csrf": token, "outcome": "upheld", "note": "No camera check, no answer from doctor"})
    await web_client.post("/web/signout", data={"csrf": token})
    token = await sign_in(web_client, ctx, ADMIN_A_CHAT)
    for _ in range(3):  # the clinic piles later reviews on top
        await web_client.post(f"/web/disputes/visit/{visit_id}/review",
                              data={"csrf": token, "outcome": "rejected", "note": "The patient was there"})
    page = await (await web_client.get("/web/disputes")).text()
    badges = dict(re.findall(r'data-reviewer="(\w+)">([^<]+)</span>', page))
    assert badges == {"auditor": "аудитор: пациенттің сөзі рас", "admin": "емхана әкімшісі: пациент қабылдауда болған"}
    assert page.count("No camera check, no answer from doctor") == 1  # the auditor's note is still listed
    body = (await (await web_client.get("/web/disputes.csv")).read()).decode("utf-8-sig")
    (row,) = list(csv.reader(io.StringIO(body)))[1:]
    assert row[-5:] == ["4", "пациент қабылдауда болған", "The patient was there", "пациенттің сөзі рас",
                        "No camera check, no answer from doctor"]


async def test_what_patients_and_reviewers_write_stays_text_in_the_page(web_client, ctx, world):
    visit_id = await disputed(ctx, world.a, '<img src=x onerror="alert(1)">')
    token = await sign_in(web_client, ctx, ADMIN_A_CHAT)
    await web_client.post(f"/web/disputes/visit/{visit_id}/review",
                          data={"csrf": token, "outcome": "rejected", "note": "</li><script>alert(2)</script>"})
    page = await (await web_client.get("/web/disputes")).text()
    assert "<script>alert(2)" not in page and "&lt;script&gt;alert(2)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=" in page
