"""Evidence counts only for the visit it belongs to, when it happens: a face frame or a code outside the visit's
window is refused before any image work; a visit registered after its window had closed is accepted, marked
`registered_late` and collects no evidence; the visit and the digest say when the evidence was made (registered,
verified, by which method, against which enrolment), and flag a match against a reference enrolled under 24 hours
before for a patient with no chat to hear of that enrolment (`fresh_reference`)."""
from __future__ import annotations

import csv
import datetime as dt
import io

from sqlalchemy import insert

from core.clock import ALMATY
from core.db import tables as t
from core.iin import make_iin
from core.model import OutboxKind
from core.services import chat, codes, registry, visits
from tests.conftest import VALID_IINS
from tests.server.conftest import add_visit
from tests.server.support import _encoding, fake_frame

API = "/api/v1"
JPEG = {"Content-Type": "image/jpeg"}


async def enrol(ctx, clinic_id: int, patient_id: int, who: str = "asel") -> int:
    """Enrol one reference with its enrolment record (a `patient_changes` row the template points at), as the
    enrolment service stores it; returns the enrolment id."""
    now = ctx.clock.now()
    await registry.record_consent(ctx, clinic_id, patient_id, "Nurse")
    async with ctx.uow() as uow:
        await uow.templates.revoke_all(patient_id, now)
        change = (await uow.conn.execute(insert(t.patient_changes).values(
            patient_id=patient_id, clinic_id=clinic_id, kind="face_enrolled", at=now, actor="clinic_system")
            .returning(t.patient_changes.c.id))).scalar_one()
        await uow.conn.execute(insert(t.face_templates).values(
            patient_id=patient_id, sealed=ctx.cipher.seal(patient_id, _encoding(who)), created_at=now,
            enrolment_id=change))
        await uow.commit()
    return change


async def face(client, tenant, visit_id: int, frame: bytes):
    response = await client.post(f"{API}/visits/{visit_id}/face", data=frame, headers={**tenant.h("webcam"), **JPEG})
    return response.status, await response.json()


async def visit_json(client, tenant, visit_id: int) -> dict:
    return await (await client.get(f"{API}/visits/{visit_id}", headers=tenant.h())).json()


async def digest_of(client, tenant, day: str) -> tuple[dict, list[dict]]:
    data = await (await client.get(f"{API}/digest?date={day}", headers=tenant.h("admin"))).json()
    response = await client.get(f"{API}/digest.csv?date={day}", headers=tenant.h("admin"))
    return data, list(csv.DictReader(io.StringIO((await response.read()).decode("utf-8-sig"))))


async def test_a_face_frame_outside_the_visits_window_is_409_before_any_image_work(client, ctx, clock, tenants,
                                                                                   faces):
    """One presence (or one replayed photo) must not verify visits a week ahead or already over."""
    a, _ = tenants
    await enrol(ctx, a.clinic_id, a.patient_ids[0])
    ahead = await add_visit(ctx, a, start_in=dt.timedelta(days=7))
    status, body = await face(client, a, ahead.id, fake_frame("face", "asel"))
    assert (status, body["code"]) == (409, "outside_window"), body
    assert "15 minutes before the start" in body["detail"]

    over = await add_visit(ctx, a)
    clock.set(over.end + ctx.settings.visit_grace + dt.timedelta(minutes=1))  # closed; the scheduler not yet run
    status, body = await face(client, a, over.id, fake_frame("face", "asel"))
    assert (status, body["code"]) == (409, "outside_window"), body
    assert faces.frames_seen == 0  # neither frame reached the face workers
    for visit in (ahead, over):
        assert (await visit_json(client, a, visit.id))["state"] == "scheduled"

    status, body = await face(client, a, (await add_visit(ctx, a)).id, fake_frame("face", "asel"))
    assert (status, body) == (200, {"decision": "match"})  # inside its window the same frame verifies


async def test_a_visit_registered_after_its_window_is_accepted_marked_and_collects_no_evidence(client, ctx, clock,
                                                                                             tenants, faces):
    a, _ = tenants
    await enrol(ctx, a.clinic_id, a.patient_ids[0])
    body = {"doctor_id": a.doctor_id, "patient_id": a.patient_ids[0], "duration_minutes": 20, "mode": "in_person",
            "service_code": "A01.001"}
    created = {}
    for name, start in (("late", "2026-11-25T07:00:00+05:00"), ("ancient", "2001-03-01T09:00:00+05:00"),
                        ("on_time", "2026-11-25T09:05:00+05:00")):
        response = await client.post(f"{API}/visits", json={**body, "start": start}, headers=a.h())
        assert response.status == 201, await response.text()
        created[name] = await response.json()
    assert [created[n]["registered_late"] for n in ("late", "ancient", "on_time")] == [True, True, False]
    assert created["late"]["registered_at"] == clock.now().isoformat()
    late_id, ancient_id = created["late"]["id"], created["ancient"]["id"]

    for visit_id in (late_id, ancient_id):
        status, problem = await face(client, a, visit_id, fake_frame("face", "asel"))
        assert (status, problem["code"]) == (409, "registered_late"), problem
        assert "registered after its verification window had closed" in problem["detail"]
    assert faces.frames_seen == 0
    requested = await client.post(f"{API}/visits/{late_id}/code-requests", headers=a.h())
    assert (requested.status, (await requested.json())["code"]) == (409, "registered_late")
    entered = await client.post(f"{API}/visits/{late_id}/code", json={"code": "123456"}, headers=a.h("webcam"))
    assert (entered.status, (await entered.json())["code"]) == (409, "registered_late")
    assert await codes.issue_code(ctx, late_id) is None
    async with ctx.uow() as uow:  # no code is ever sent for it; the patient is still asked "were you there?"
        assert [m.kind for m in await uow.outbox.pending(visit_id=late_id)] == [OutboxKind.ATTENDANCE_PROMPT]
        assert await uow.visits.code_attempts(late_id) == 0

    shown = await visit_json(client, a, late_id)
    assert (shown["registered_late"], shown["registered_at"], shown["verified_at"]) == (True, clock.now().isoformat(),
                                                                                     None)
    assert [e["step"] for e in shown["events"]] == ["register"]
    assert await visits.close_expired_windows(ctx) == 2  # the scheduler closes both as unverified
    assert (await visit_json(client, a, late_id))["state"] == "unverified"

    status, _ = await face(client, a, created["on_time"]["id"], fake_frame("face", "asel"))
    assert status == 200
    data, rows = await digest_of(client, a, "2026-11-25")
    by_id = {r["visit_id"]: r for r in data["visits"]}
    assert by_id[late_id]["registered_late"] is True and by_id[late_id]["state"] == "unverified"
    assert by_id[late_id]["registered_at"] == clock.now().astimezone(ALMATY).isoformat()
    on_time = by_id[created["on_time"]["id"]]
    assert (on_time["registered_late"], on_time["verified_by"]) == (False, "face")
    assert on_time["verified_at"] == clock.now().astimezone(ALMATY).isoformat()
    assert late_id in {r["visit_id"] for r in data["flagged"]}
    csv_rows = {int(r["visit_id"]): r for r in rows}
    assert csv_rows[late_id]["registered_late"] == "true" and csv_rows[late_id]["verified_at"] == ""
    local_now = clock.now().astimezone(ALMATY).strftime("%Y-%m-%d %H:%M")
    assert csv_rows[late_id]["registered_at"] == local_now
    assert (csv_rows[created["on_time"]["id"]]["registered_late"], csv_rows[created["on_time"]["id"]]["verified_at"]) \
        == ("false", local_now)


async def test_a_match_records_its_enrolment_and_a_fresh_reference_without_a_chat_is_flagged(client, ctx, clock,
                                                                                            tenants):
    """A clinic that enrols someone else's face for a patient who cannot hear of it, and verifies at once, is seen."""
    a, _ = tenants
    old_ref, fresh_ref, chat_ref = a.patient_ids[0], a.patient_ids[1], (await registry.upsert_patient(
        ctx, a.clinic_id, VALID_IINS[4], "Chat patient", "+77059998877", "ru")).patient.id
    stopped_ref = (await registry.upsert_patient(ctx, a.clinic_id, make_iin(dt.date(1970, 5, 4), False, 77),
                                                 "Stopped patient", "+77059998866", "ru")).patient.id
    old_enrolment = await enrol(ctx, a.clinic_id, old_ref, "old")
    old_enrolled_at = clock.now()
    clock.advance(dt.timedelta(hours=25))
    fresh_enrolment = await enrol(ctx, a.clinic_id, fresh_ref, "fresh")
    await enrol(ctx, a.clinic_id, chat_ref, "chat")
    stopped_enrolment = await enrol(ctx, a.clinic_id, stopped_ref, "stopped")
    async with ctx.uow() as uow:  # this patient's chat is linked: the enrolment notice reaches them
        await uow.patients.set_chat("+77059998877", 555001)
        await uow.patients.set_chat("+77059998866", 555002)
        await uow.commit()
    await chat.stop_chat(ctx, 555002)  # linked, but the patient sent /stop: the bot tells them nothing
    clock.advance(dt.timedelta(hours=2))
    verified = {}
    for patient_id, who in ((old_ref, "old"), (fresh_ref, "fresh"), (chat_ref, "chat"), (stopped_ref, "stopped")):
        visit = await visits.register_visit(ctx, clinic_id=a.clinic_id, doctor_id=a.doctor_id, patient_id=patient_id,
                                            start=clock.now(), duration=dt.timedelta(minutes=20),
                                            mode="in_person", service_code="A01")
        status, body = await face(client, a, visit.id, fake_frame("face", who))
        assert (status, body) == (200, {"decision": "match"})
        verified[who] = await visit_json(client, a, visit.id)

    fresh = verified["fresh"]
    assert fresh["verified_enrolment_id"] == fresh_enrolment
    assert fresh["enrolled_at"] == (clock.now() - dt.timedelta(hours=2)).isoformat()
    assert fresh["fresh_reference"] is True and fresh["verified_at"] == clock.now().isoformat()
    old = verified["old"]
    assert (old["verified_enrolment_id"], old["enrolled_at"], old["fresh_reference"]) \
        == (old_enrolment, old_enrolled_at.isoformat(), False)
    assert verified["chat"]["fresh_reference"] is False
    assert (verified["stopped"]["verified_enrolment_id"], verified["stopped"]["fresh_reference"]) == (
        stopped_enrolment, True)

    day = clock.now().astimezone(ALMATY).date().isoformat()
    data, rows = await digest_of(client, a, day)
    assert [r["visit_id"] for r in data["flagged"]] == [fresh["id"], verified["stopped"]["id"]]
    assert data["flagged"][0]["fresh_reference"] is True
    assert data["flagged"][0]["verified_enrolment_id"] == fresh_enrolment
    assert data["totals"]["fresh_reference"] == 2
    assert {int(r["visit_id"]): r["fresh_reference"] for r in rows} == {
        verified["old"]["id"]: "false", fresh["id"]: "true", verified["chat"]["id"]: "false",
        verified["stopped"]["id"]: "true"}
    assert {int(r["visit_id"]): r["enrolment_id"] for r in rows}[fresh["id"]] == str(fresh_enrolment)
