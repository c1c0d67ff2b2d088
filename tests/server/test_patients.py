"""Patients over HTTP: upsert by IIN, consent, all-or-nothing enrolment, revocation, and clear 4xx for bad input."""
from __future__ import annotations

import json

import aiohttp
import pytest

from core.services import registry
from tests.server.support import fake_frame

API = "/api/v1"
NEW_PATIENT = {"iin": "880725400129", "full_name": "Aigerim S.", "phone": "8 707 123 45 67", "language": "kk"}


def images(*frames: bytes, name: str = "image") -> aiohttp.FormData:
    form = aiohttp.FormData()
    for number, frame in enumerate(frames, start=1):
        form.add_field(name, frame, filename=f"photo{number}.jpg", content_type="image/jpeg")
    return form


async def test_create_then_update_by_iin(client, tenants):
    a, _ = tenants
    created = await client.post(f"{API}/patients", json=NEW_PATIENT, headers=a.h())
    assert created.status == 201
    body = await created.json()
    assert body["created"] is True and body["phone"] == "+77071234567" and "iin" not in body
    updated = await client.post(f"{API}/patients", json={**NEW_PATIENT, "full_name": "Aigerim Seitova"},
                                headers=a.h())
    assert updated.status == 200
    assert (await updated.json()) | {"created": True} == body | {"full_name": "Aigerim Seitova"}


@pytest.mark.parametrize("payload, code, field", [
    ({**NEW_PATIENT, "iin": "880725400128"}, "invalid_iin", "iin"),
    ({**NEW_PATIENT, "phone": "12345"}, "invalid_phone", "phone"),
    ({k: v for k, v in NEW_PATIENT.items() if k != "iin"}, "invalid_body", "iin"),
    ({**NEW_PATIENT, "nickname": "A"}, "invalid_body", "nickname"),
    ({**NEW_PATIENT, "iin": 880725400129}, "invalid_body", "iin"),
    ({**NEW_PATIENT, "language": "en"}, "invalid_body", "language"),
    ([NEW_PATIENT], "invalid_body", None),
])
async def test_bad_patient_bodies_are_422_naming_the_field(client, tenants, payload, code, field):
    a, _ = tenants
    response = await client.post(f"{API}/patients", json=payload, headers=a.h())
    assert response.status == 422
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    assert problem["code"] == code and problem["status"] == 422 and problem["type"].startswith("urn:rastau:")
    if field:
        assert field in problem["detail"].lower() or problem.get("field") == field
    assert "880725400" not in problem["detail"]  # the value itself is never echoed


@pytest.mark.parametrize("raw, content_type, status, code", [
    (b'{"iin": "8807', "application/json", 422, "invalid_json"),
    (b"", "application/json", 422, "body_missing"),
    (b"iin=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    (b'{"iin": "' + b"9" * 2_000_000 + b'"}', "application/json", 413, "body_too_large"),
])
async def test_unreadable_bodies_are_clear_4xx(client, tenants, raw, content_type, status, code):
    a, _ = tenants
    response = await client.post(f"{API}/patients", data=raw, headers={**a.h(), "Content-Type": content_type})
    assert response.status == status
    assert (await response.json())["code"] == code


async def test_enrolment_needs_consent_then_stores_how_many_faces(client, ctx, tenants, faces):
    a, _ = tenants
    patient = a.patient_ids[0]
    refused = await client.put(f"{API}/patients/{patient}/face", data=images(fake_frame("face", "asel")),
                               headers=a.h())
    assert refused.status == 409 and (await refused.json())["code"] == "consent_missing"
    assert faces.frames_seen == 0  # refused before any face worker time was spent
    consent = await client.post(f"{API}/patients/{patient}/consent", json={"recorded_by": "Nurse Dana"},
                                headers=a.h())
    assert consent.status == 200 and (await consent.json())["consent_recorded_by"] == "Nurse Dana"
    enrolled = await client.put(f"{API}/patients/{patient}/face",
                                data=images(fake_frame("face", "asel"), fake_frame("face", "asel")), headers=a.h())
    assert enrolled.status == 200
    assert await enrolled.json() == {"enrolled": 2}  # nothing biometric in the answer
    assert len(await registry.face_references(ctx, patient)) == 2


async def test_enrolment_is_all_or_nothing_and_names_the_bad_image(client, ctx, tenants):
    a, _ = tenants
    patient = a.patient_ids[0]
    await registry.record_consent(ctx, a.clinic_id, patient, "Nurse")
    response = await client.put(f"{API}/patients/{patient}/face", headers=a.h(), data=images(
        fake_frame("face", "asel"), fake_frame("noface"), fake_frame("multi")))
    assert response.status == 422
    detail = (await response.json())["detail"]
    assert "image 2 shows no face" in detail and "image 3 shows several faces" in detail
    assert await registry.face_references(ctx, patient) == []
    unreadable = await client.put(f"{API}/patients/{patient}/face", headers=a.h(), data=images(
        fake_frame("face", "asel"), b"GIF89a not a photo"))
    assert unreadable.status == 422 and "image 2 of 2" in (await unreadable.json())["detail"]


@pytest.mark.parametrize("form, status, code", [
    (lambda: images(*[fake_frame("face", "x")] * 6), 422, "too_many_images"),
    (lambda: images(fake_frame("face", "x"), name="photo"), 422, "invalid_body"),
    (lambda: aiohttp.FormData({"note": "no images"}, default_to_multipart=True), 422, "invalid_body"),
    (lambda: {"image": "x"}, 415, "unsupported_media_type"),
])
async def test_malformed_enrolment_uploads(client, ctx, tenants, form, status, code):
    a, _ = tenants
    await registry.record_consent(ctx, a.clinic_id, a.patient_ids[0], "Nurse")
    response = await client.put(f"{API}/patients/{a.patient_ids[0]}/face", data=form(), headers=a.h())
    assert response.status == status
    assert (await response.json())["code"] == code


async def test_enrolment_photo_over_the_byte_cap_is_413(aiohttp_client, settings, ctx, faces, tenants):
    from server.app import create_app

    small = settings.model_copy(update={"face_max_bytes": 2048})
    client = await aiohttp_client(create_app(small, ctx=ctx, face_pool=faces))
    a, _ = tenants
    await registry.record_consent(ctx, a.clinic_id, a.patient_ids[0], "Nurse")
    response = await client.put(f"{API}/patients/{a.patient_ids[0]}/face", data=images(b"x" * 4096), headers=a.h())
    assert response.status == 413 and (await response.json())["code"] == "image_too_large"
    assert faces.frames_seen == 0


async def test_revoke_enrolment(client, ctx, tenants):
    a, _ = tenants
    patient = a.patient_ids[0]
    await registry.record_consent(ctx, a.clinic_id, patient, "Nurse")
    await registry.enrol_face(ctx, a.clinic_id, patient, [(0.0,) * 128])
    response = await client.delete(f"{API}/patients/{patient}/face", headers=a.h())
    assert response.status == 200 and await response.json() == {"revoked": 1}
    assert await registry.face_references(ctx, patient) == []


async def test_unknown_patient_is_404_problem(client, tenants):
    a, _ = tenants
    response = await client.post(f"{API}/patients/999999/consent", json={"recorded_by": "N"}, headers=a.h())
    assert response.status == 404 and (await response.json())["code"] == "not_found"


@pytest.mark.parametrize("patch, says", [
    ({"full_name": "Asel\u0000"}, "full_name"),
    ({"full_name": "Asel \ud800"}, "not valid JSON"),  # a lone surrogate
])
async def test_text_the_databases_cannot_store_is_422(client, tenants, patch, says):
    a, _ = tenants
    raw = json.dumps({**NEW_PATIENT, **patch})  # ensure_ascii keeps both escaped, as a client would send them
    response = await client.post(f"{API}/patients", data=raw, headers={**a.h(), "Content-Type": "application/json"})
    assert response.status == 422
    assert says in (await response.json())["detail"]


async def test_a_key_with_undecodable_bytes_is_401_not_500(client):
    response = await client.get(f"{API}/visits", headers={"Authorization": "Bearer rk_0123456789ab_\u00e9\u00ff"})
    assert response.status == 401


async def test_a_malformed_multipart_body_is_422(client, ctx, tenants):
    a, _ = tenants
    await registry.record_consent(ctx, a.clinic_id, a.patient_ids[0], "Nurse")
    boundary = "b0undary"
    raw = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"\xf0\x12\"\r\n\r\nx\r\n--{boundary}--\r\n"
           .encode("latin-1"))
    response = await client.put(f"{API}/patients/{a.patient_ids[0]}/face", data=raw, headers={
        **a.h(), "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status == 422 and (await response.json())["code"] == "invalid_multipart"


async def test_a_nested_multipart_part_is_422_not_500(client, ctx, tenants, faces):
    """aiohttp reads a part that is itself multipart as a nested reader, which has no name and no bytes to read."""
    a, _ = tenants
    await registry.record_consent(ctx, a.clinic_id, a.patient_ids[0], "Nurse")
    raw = (b"--outer\r\nContent-Disposition: form-data; name=\"image\"\r\n"
           b"Content-Type: multipart/mixed; boundary=inner\r\n\r\n"
           b"--inner\r\nContent-Type: image/jpeg\r\n\r\nx\r\n--inner--\r\n\r\n--outer--\r\n")
    response = await client.put(f"{API}/patients/{a.patient_ids[0]}/face", data=raw, headers={
        **a.h(), "Content-Type": "multipart/form-data; boundary=outer"})
    assert response.status == 422 and (await response.json())["code"] == "invalid_body"
    assert faces.frames_seen == 0


async def _patient_by_iin(ctx, clinic_id: int, iin: str):
    async with ctx.uow(read_only=True) as uow:
        return await uow.patients.by_iin(clinic_id, iin)


async def test_a_staff_members_number_is_refused_as_a_patients(client, ctx, tenants):
    """A clinic registering its own doctor's or admin's phone for a patient would receive that patient's codes and
    "were you there?" questions itself: refused, however the number is typed, and nothing is written."""
    a, b = tenants
    await registry.add_admin(ctx, a.clinic_id, "Admin A", "+7 702 000 11 22")
    for typed in ("8 (701) 111-00-00", "+7 702 000 11 22"):  # doctor one of clinic A, then its admin
        response = await client.post(f"{API}/patients", json={**NEW_PATIENT, "phone": typed}, headers=a.h())
        assert response.status == 409
        problem = await response.json()
        assert (problem["code"], problem["field"]) == ("staff_phone", "phone")
        assert "patient's own number" in problem["detail"]
    assert await _patient_by_iin(ctx, a.clinic_id, NEW_PATIENT["iin"]) is None

    # an existing patient cannot be moved onto a staff number either; the old number stays
    assert (await client.post(f"{API}/patients", json=NEW_PATIENT, headers=a.h())).status == 201
    moved = await client.post(f"{API}/patients", json={**NEW_PATIENT, "phone": "+77011110001"}, headers=a.h())
    assert (moved.status, (await moved.json())["code"]) == (409, "staff_phone")
    assert (await _patient_by_iin(ctx, a.clinic_id, NEW_PATIENT["iin"])).phone == "+77071234567"

    # another clinic's doctor may well be this clinic's patient
    elsewhere = await client.post(f"{API}/patients", json={**NEW_PATIENT, "phone": "+77011110000"}, headers=b.h())
    assert elsewhere.status in (200, 201)  # clinic B happens to know this IIN already: an update


async def test_a_patients_number_is_refused_for_new_staff(ctx, tenants):
    from core.errors import StaffPhone

    a, b = tenants
    patient_phone = "+77051110000"  # clinic A's first patient
    with pytest.raises(StaffPhone, match="belongs to a patient of this clinic"):
        await registry.add_doctor(ctx, a.clinic_id, "New doctor", "8 705 111 00 00")
    with pytest.raises(StaffPhone, match="belongs to a patient of this clinic"):
        await registry.add_admin(ctx, a.clinic_id, "New admin", patient_phone)
    async with ctx.uow(read_only=True) as uow:
        assert await uow.doctors.by_phone(patient_phone) == [] and await uow.admins.by_phone(patient_phone) == []
    assert (await registry.add_doctor(ctx, b.clinic_id, "Doctor elsewhere", patient_phone)).clinic_id == b.clinic_id
