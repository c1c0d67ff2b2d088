"""A hostile clinic and its patients' identity: a doctor-bound key cannot reach other doctors' patients nor
enrol faces or move phones at all; every enrolment, replacement, revocation, phone and consent change reaches
the patient's chat (the old chat for a new phone) and the audit log with the key that did it; a face is
replaced at most once per RASTAU_FACE_REPLACEMENT_MIN_DAYS."""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json

import aiohttp
from sqlalchemy import func, select

from core.db import tables as t
from core.services import api_keys, chat
from tests.conftest import patient_change_rows
from tests.server.conftest import add_visit
from tests.server.support import CLINIC_A_IINS, bearer, fake_frame
from tests.server.test_auth import call, probes, protected_routes

API = "/api/v1"
CHAT = 5001


def photos(who: str = "asel") -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("image", fake_frame("face", who), filename="a.jpg", content_type="image/jpeg")
    return form


def prefix(key: str) -> str:
    return api_keys.split_key(key)


async def notices(ctx) -> list:
    async with ctx.uow(read_only=True) as uow:
        rows = (await uow.conn.execute(select(t.outbox).where(t.outbox.c.kind == "patient_change_notice")
                                       .order_by(t.outbox.c.id))).all()
    return [(r.recipient_kind, r.recipient_id, json.loads(r.payload)) for r in rows]


async def audit_rows(ctx, action_prefix: str) -> list:
    async with ctx.uow(read_only=True) as uow:
        return [r for r in await uow.audit.records() if r.action.startswith(action_prefix)]


async def counts(ctx) -> tuple[int, ...]:
    async with ctx.uow(read_only=True) as uow:
        return tuple([(await uow.conn.execute(select(func.count()).select_from(table))).scalar_one()
                      for table in (t.face_templates, t.patient_changes, t.outbox)]
                     + [sum(head.seq for head in await uow.audit.heads())])


async def test_a_doctor_bound_key_finds_no_patient_outside_its_doctor(app, client, ctx, tenants):
    """Patient 0 sees doctor two only, patient 1 no doctor at all: to doctor one's key neither exists, on every
    patient route, and an upsert by IIN cannot move doctor two's patient to another phone."""
    a, _ = tenants
    visit = await add_visit(ctx, a, doctor_id=a.other_doctor_id, patient=0)
    probed = 0
    for patient in a.patient_ids:
        table = probes(dataclasses.replace(a, patient_ids=[patient]), visit)
        for method, path, _scopes in protected_routes(app):
            if "{patient_id}" not in path:
                continue
            response = await call(client, method, table[(method, path)], a.doctor_key)
            assert response.status == 404, f"{method} {path} for patient {patient}: {await response.text()}"
            probed += 1
    assert probed == 6
    moved = await client.post(f"{API}/patients", headers=bearer(a.doctor_key), json={
        "iin": CLINIC_A_IINS[0], "full_name": "Someone Else", "phone": "+77079990000"})
    assert moved.status == 404 and (await moved.json())["code"] == "not_found"
    async with ctx.uow(read_only=True) as uow:
        untouched = await uow.patients.get(a.patient_ids[0])
    assert (untouched.phone, untouched.consent_at) == ("+77051110000", None)
    assert await patient_change_rows(ctx, a.patient_ids[0]) == []


async def test_a_doctor_bound_key_cannot_enrol_revoke_or_move_a_phone_even_for_its_own_patient(client, ctx,
                                                                                               tenants, faces):
    a, _ = tenants
    own = a.patient_ids[0]
    await add_visit(ctx, a, patient=0)
    consent = await client.post(f"{API}/patients/{own}/consent", json={"recorded_by": "Nurse"},
                                headers=bearer(a.doctor_key))
    assert consent.status == 200, "consent for its own doctor's patient is fine"
    for method in ("PUT", "DELETE"):
        response = await client.request(method, f"{API}/patients/{own}/face", headers=bearer(a.doctor_key),
                                        data=photos() if method == "PUT" else None)
        problem = await response.json()
        assert (response.status, problem["code"]) == (403, "doctor_key_forbidden"), problem
        assert "clinic" in problem["detail"]
    assert faces.frames_seen == 0, "refused before any photo was analysed"
    moved = await client.post(f"{API}/patients", headers=bearer(a.doctor_key), json={
        "iin": CLINIC_A_IINS[0], "full_name": "Polyclinic A patient 0", "phone": "+77079990000", "language": "kk"})
    assert (moved.status, (await moved.json())["code"]) == (403, "doctor_key_forbidden")
    renamed = await client.post(f"{API}/patients", headers=bearer(a.doctor_key), json={
        "iin": CLINIC_A_IINS[0], "full_name": "Polyclinic A patient 0 (renamed)", "phone": "+77051110000",
        "language": "kk"})
    assert renamed.status == 200, "a name is not what identifies the patient to us"
    async with ctx.uow(read_only=True) as uow:
        assert (await uow.patients.get(own)).phone == "+77051110000"
        assert await uow.templates.active(own) == []
    assert [c.kind for c in await patient_change_rows(ctx, own)] == ["consent_recorded"]
    assert (await patient_change_rows(ctx, own))[0].actor == f"key:{prefix(a.doctor_key)}"


async def test_every_change_notifies_the_patients_chat_and_names_the_key(client, ctx, tenants):
    a, _ = tenants
    patient = a.patient_ids[0]
    await chat.link_chat_by_phone(ctx, CHAT, "+77051110000", "kk")
    key = prefix(a.keys["clinic_system"])

    assert (await client.post(f"{API}/patients/{patient}/consent", json={"recorded_by": "Nurse"},
                              headers=a.h())).status == 200
    assert (await client.put(f"{API}/patients/{patient}/face", data=photos(), headers=a.h())).status == 200
    assert (await client.put(f"{API}/patients/{patient}/face", data=photos("other"), headers=a.h())).status == 200
    assert (await client.delete(f"{API}/patients/{patient}/face", headers=a.h())).status == 200
    moved = await client.post(f"{API}/patients", headers=a.h(), json={
        "iin": CLINIC_A_IINS[0], "full_name": "Polyclinic A patient 0", "phone": "+77079990000", "language": "kk"})
    assert moved.status == 200 and (await moved.json())["chat_linked"] is False

    made = await patient_change_rows(ctx, patient)
    assert [c.kind for c in made] == ["consent_recorded", "face_enrolled", "face_replaced", "face_revoked",
                                      "phone_changed"]
    assert {c.actor for c in made} == {f"key:{key}"} and {c.clinic_id for c in made} == {a.clinic_id}
    assert all(c.disputed_at is None for c in made)
    sent = await notices(ctx)
    assert sent == [("patient", patient, {"change_id": c.id, "chat_id": CHAT, "phone": "+77051110000"})
                    for c in made], \
        "each change, the phone change too, goes to the chat and the number the patient had (the old ones for a " \
        "new phone)"

    audited = await audit_rows(ctx, "patient.")
    changed = [r for r in audited if r.details.get("change") is not None]
    assert [(r.action, r.actor, r.details["change"]) for r in changed] == [
        ("patient.consent", f"key:{key}", made[0].id), ("patient.enrol", f"key:{key}", made[1].id),
        ("patient.enrol", f"key:{key}", made[2].id), ("patient.revoke_enrolment", f"key:{key}", made[3].id),
        ("patient.update", f"key:{key}", made[4].id)]
    async with ctx.uow(read_only=True) as uow:
        enrolments = (await uow.conn.execute(select(t.face_templates.c.enrolment_id).where(
            t.face_templates.c.patient_id == patient).order_by(t.face_templates.c.id))).scalars().all()
    assert enrolments == [made[1].id, made[2].id], "each reference names the enrolment that stored it"


async def test_a_second_replacement_within_the_limit_is_429_and_writes_nothing(client, ctx, tenants):
    a, _ = tenants
    patient = a.patient_ids[1]
    await chat.link_chat_by_phone(ctx, CHAT, "+77051110001", "ru")
    await client.post(f"{API}/patients/{patient}/consent", json={"recorded_by": "Nurse"}, headers=a.h())
    assert (await client.put(f"{API}/patients/{patient}/face", data=photos(), headers=a.h())).status == 200
    assert (await client.put(f"{API}/patients/{patient}/face", data=photos("b"), headers=a.h())).status == 200
    before = await counts(ctx)

    ctx.clock.advance(dt.timedelta(days=29, hours=23))
    refused = await client.put(f"{API}/patients/{patient}/face", data=photos("intruder"), headers=a.h())
    problem = await refused.json()
    assert (refused.status, problem["code"]) == (429, "face_replacement_limited"), problem
    assert int(refused.headers["Retry-After"]) == problem["retry_after"] == 3600
    assert "30 days" in problem["detail"]
    # deleting first does not make the next enrolment a "first" one
    revoked_then = await client.delete(f"{API}/patients/{patient}/face", headers=a.h())
    assert revoked_then.status == 200, "withdrawing a face is never limited"
    again = await client.put(f"{API}/patients/{patient}/face", data=photos("intruder"), headers=a.h())
    assert again.status == 429
    after = await counts(ctx)
    assert (after[0], after[1] - before[1], after[2] - before[2], after[3] - before[3]) == (before[0], 1, 1, 1), \
        "only the revocation was written: no template, change, notice or audit row for the refused ones"

    ctx.clock.advance(dt.timedelta(hours=1))
    assert (await client.put(f"{API}/patients/{patient}/face", data=photos("c"), headers=a.h())).status == 200


async def test_the_digest_lists_the_days_enrolment_disputes(client, ctx, tenants):
    from core.services.patient_changes import dispute_change

    a, _ = tenants
    patient = a.patient_ids[0]
    await chat.link_chat_by_phone(ctx, CHAT, "+77051110000", "kk")
    await client.post(f"{API}/patients/{patient}/consent", json={"recorded_by": "Nurse"}, headers=a.h())
    await client.put(f"{API}/patients/{patient}/face", data=photos(), headers=a.h())
    enrolled = (await patient_change_rows(ctx, patient))[1]
    ctx.clock.advance(dt.timedelta(hours=2))
    assert (await dispute_change(ctx, enrolled.id, CHAT)).changed

    found = await (await client.get(f"{API}/digest?date=2026-11-25", headers=a.h("admin"))).json()
    assert found["all_confirmed"] is False
    assert found["enrolment_disputes"] == [{
        "change_id": enrolled.id, "kind": "face_enrolled", "patient_id": patient,
        "patient_name": "Polyclinic A patient 0", "iin_masked": "********" + CLINIC_A_IINS[0][-4:],
        "actor": f"key:{prefix(a.keys['clinic_system'])}", "changed_at_local": "2026-11-25T09:00:00+05:00",
        "disputed_at_local": "2026-11-25T11:00:00+05:00"}]
    sheet = (await (await client.get(f"{API}/digest.csv?date=2026-11-25", headers=a.h("admin"))).text())
    rows = list(csv.reader(io.StringIO(sheet.lstrip("\ufeff"))))
    at = rows.index(["change_id", "kind", "changed_at_local", "disputed_at_local", "actor", "patient", "iin"])
    assert rows[at + 1] == [str(enrolled.id), "face_enrolled", "2026-11-25 09:00", "2026-11-25 11:00",
                            f"key:{prefix(a.keys['clinic_system'])}", "Polyclinic A patient 0",
                            "********" + CLINIC_A_IINS[0][-4:]]
    assert CLINIC_A_IINS[0] not in sheet
    next_day = await (await client.get(f"{API}/digest?date=2026-11-26", headers=a.h("admin"))).json()
    assert next_day["enrolment_disputes"] == []
