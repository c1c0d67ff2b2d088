"""Face and code verification over HTTP (with the fake analyser; test_faces_real.py uses real photos)."""
from __future__ import annotations

import datetime as dt

from core.model import OutboxKind, VisitMode
from core.services import codes, registry, visits
from server.app import create_app
from tests.server.conftest import add_visit
from tests.server.support import FakeAnalyser, _encoding, fake_frame

API = "/api/v1"
JPEG = {"Content-Type": "image/jpeg"}


async def enrol(ctx, tenant, who: str = "asel", patient: int = 0) -> None:
    await registry.record_consent(ctx, tenant.clinic_id, tenant.patient_ids[patient], "Nurse")
    await registry.enrol_face(ctx, tenant.clinic_id, tenant.patient_ids[patient], [_encoding(who)])


async def face(client, tenant, visit_id: int, frame: bytes, headers=None):
    return await client.post(f"{API}/visits/{visit_id}/face", data=frame,
                             headers={**tenant.h("webcam"), **(headers or JPEG)})


async def test_match_verifies_the_visit(client, ctx, tenants):
    a, _ = tenants
    await enrol(ctx, a)
    visit = await add_visit(ctx, a)
    response = await face(client, a, visit.id, fake_frame("face", "asel"))
    assert response.status == 200 and await response.json() == {"decision": "match"}
    state = await client.get(f"{API}/visits/{visit.id}", headers=a.h())
    assert (await state.json())["verified_by"] == "face"


async def test_decisions_never_include_a_distance(client, ctx, tenants):
    a, _ = tenants
    await enrol(ctx, a)
    visit = await add_visit(ctx, a)
    for frame, decision in [(fake_frame("face", "bob"), "no_match"), (fake_frame("noface"), "no_face"),
                            (fake_frame("multi"), "multiple_faces")]:
        response = await face(client, a, visit.id, frame)
        assert await response.json() == {"decision": decision}


async def test_online_visit_face_is_409_code_only(client, ctx, tenants, faces):
    a, _ = tenants
    await enrol(ctx, a)
    visit = await add_visit(ctx, a, mode=VisitMode.ONLINE)
    response = await face(client, a, visit.id, fake_frame("face", "asel"))
    assert response.status == 409
    assert "online consultations are verified by one-time code only" in (await response.json())["detail"]
    assert faces.frames_seen == 0  # refused before any image work


async def test_not_enrolled_is_409(client, ctx, tenants):
    a, _ = tenants
    visit = await add_visit(ctx, a)
    response = await face(client, a, visit.id, fake_frame("face", "asel"))
    assert response.status == 409 and (await response.json())["code"] == "not_enrolled"


async def test_five_failures_lock_face_with_retry_after_and_the_code_still_works(client, ctx, tenants, faces):
    a, _ = tenants
    await enrol(ctx, a)
    visit = await add_visit(ctx, a)
    for _ in range(5):
        body = await (await face(client, a, visit.id, fake_frame("face", "impostor"))).json()
        assert body["decision"] == "no_match"
    assert body["face_locked_for_seconds"] >= 30
    seen = faces.frames_seen
    locked = await face(client, a, visit.id, fake_frame("face", "asel"))
    assert locked.status == 429
    assert int(locked.headers["Retry-After"]) >= 30
    assert (await locked.json())["code"] == "face_attempts_locked"
    assert faces.frames_seen == seen  # the locked request never reached the face workers
    issued = await codes.issue_code(ctx, visit.id)
    verified = await client.post(f"{API}/visits/{visit.id}/code", json={"code": issued.code}, headers=a.h("webcam"))
    assert verified.status == 200 and (await verified.json())["result"] == "verified"


async def test_face_lockouts_grow_on_repeats(client, ctx, clock, tenants):
    a, _ = tenants
    await enrol(ctx, a)
    visit = await add_visit(ctx, a)
    locks = []
    for _ in range(2):
        for _ in range(5):
            body = await (await face(client, a, visit.id, fake_frame("face", "impostor"))).json()
        locks.append(body["face_locked_for_seconds"])
        clock.advance(dt.timedelta(seconds=body["face_locked_for_seconds"] + 1))
    assert locks == [30, 60]


async def test_frame_content_type_and_size_caps(aiohttp_client, settings, ctx, faces, tenants):
    a, _ = tenants
    await enrol(ctx, a)
    visit = await add_visit(ctx, a)
    client = await aiohttp_client(create_app(settings.model_copy(update={"face_max_bytes": 2048}), ctx=ctx,
                                             face_pool=faces))
    declared = await face(client, a, visit.id, b"x" * 4096)
    assert declared.status == 413 and (await declared.json())["code"] == "image_too_large"

    async def chunked():
        for _ in range(8):
            yield b"x" * 1024

    streamed = await face(client, a, visit.id, chunked())
    assert streamed.status == 413
    wrong_type = await face(client, a, visit.id, b"GIF89a", headers={"Content-Type": "image/gif"})
    assert wrong_type.status == 415
    empty = await face(client, a, visit.id, b"")
    assert empty.status == 422 and (await empty.json())["code"] == "image_empty"
    assert faces.frames_seen == 1  # only the empty frame got as far as the analyser


async def test_code_outcomes(client, ctx, clock, tenants):
    a, _ = tenants
    visit = await add_visit(ctx, a, mode=VisitMode.ONLINE)
    url, h = f"{API}/visits/{visit.id}/code", a.h("webcam")
    nothing = await client.post(url, json={"code": "123456"}, headers=h)
    assert await nothing.json() == {"result": "no_code", "attempts_left": 4}
    issued = await codes.issue_code(ctx, visit.id)
    wrong = "000000" if issued.code != "000000" else "111111"
    response = await client.post(url, json={"code": wrong}, headers=h)
    assert await response.json() == {"result": "wrong", "attempts_left": 3}
    malformed = await client.post(url, json={"code": "12ab56"}, headers=h)
    assert malformed.status == 422 and "6 digits" in (await malformed.json())["detail"]
    clock.advance(dt.timedelta(hours=2))
    expired = await client.post(url, json={"code": issued.code}, headers=h)
    assert await expired.json() == {"result": "expired", "attempts_left": 2}


async def test_code_locks_after_the_attempt_cap_with_429(client, ctx, tenants):
    a, _ = tenants
    visit = await add_visit(ctx, a)
    issued = await codes.issue_code(ctx, visit.id)
    wrong = "000000" if issued.code != "000000" else "111111"
    url = f"{API}/visits/{visit.id}/code"
    for _ in range(5):
        assert (await client.post(url, json={"code": wrong}, headers=a.h())).status == 200
    locked = await client.post(url, json={"code": issued.code}, headers=a.h())
    assert locked.status == 429
    problem = await locked.json()
    assert problem["code"] == "code_locked" and problem["result"] == "locked"
    assert issued.code not in await locked.text()


async def test_code_request_is_queued_and_never_answered(client, ctx, tenants):
    a, _ = tenants
    visit = await add_visit(ctx, a, mode=VisitMode.ONLINE)
    async with ctx.uow() as uow:
        await uow.patients.set_chat((await uow.patients.get(a.patient_ids[0])).phone, 7001)
        await uow.commit()
    response = await client.post(f"{API}/visits/{visit.id}/code-requests", headers=a.h())
    assert response.status == 202
    assert await response.json() == {"status": "queued", "channel": "telegram", "requests_left": 2}
    async with ctx.uow() as uow:
        queued = await uow.outbox.pending(visit_id=visit.id, kind=OutboxKind.VISIT_CODE)
    assert [row.payload for row in queued] == ['{"reason": "requested"}']
    await visits.cancel_visit(ctx, a.clinic_id, visit.id)
    closed = await client.post(f"{API}/visits/{visit.id}/code-requests", headers=a.h())
    assert closed.status == 409


async def test_a_reference_sealed_under_another_key_is_409_not_500(client, ctx, tenants):
    from core.db.keystore import PatientKeyStore

    a, _ = tenants
    await enrol(ctx, a)
    visit = await add_visit(ctx, a)
    # e.g. RASTAU_TEMPLATE_KEY changed since enrolment: the patient's own key (issue 16) no longer unwraps
    ctx.keys = PatientKeyStore(ctx.keys.url, b"k" * 32)
    response = await face(client, a, visit.id, fake_frame("face", "asel"))
    assert response.status == 409
    assert "re-enrol" in (await response.json())["detail"]


async def test_a_doctors_hourly_code_cap_is_429_with_retry_after(aiohttp_client, settings, ctx, tenants):
    from core.config import Settings
    from core.services import Context

    capped = Settings(_env_file=None, **{**settings.model_dump(), "doctor_code_failures_per_hour": 2})
    capped_ctx = Context.build(capped, ctx.uow, ctx.clock)
    client = await aiohttp_client(create_app(capped, ctx=capped_ctx, face_pool=FakeAnalyser()))
    a, _ = tenants
    first, second = await add_visit(ctx, a), await add_visit(ctx, a, patient=1)
    for visit in (first, second):
        response = await client.post(f"{API}/visits/{visit.id}/code", json={"code": "123456"}, headers=a.h())
        assert (await response.json())["result"] == "no_code"
    capped_response = await client.post(f"{API}/visits/{first.id}/code", json={"code": "123456"}, headers=a.h())
    assert capped_response.status == 429
    assert (await capped_response.json())["code"] == "doctor_code_cap"
    assert 0 < int(capped_response.headers["Retry-After"]) <= 3601
