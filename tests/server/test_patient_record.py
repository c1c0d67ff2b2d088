"""Withdrawal over the real server API (issue 16): after the patient's /withdraw the face route answers
`no_reference` and the one-time code still verifies; the clinic has no way to withdraw for the patient, its own
revocation is told to the patient, and a visit verified by face before keeps its evidence."""
from __future__ import annotations

import json

from core.model import OutboxKind
from core.services import codes
from core.services.chat import link_chat_by_phone
from core.services.patient_record import withdraw_consent
from server.openapi import DOCUMENT
from tests.server.conftest import add_visit
from tests.server.support import fake_frame
from tests.server.test_patients import images
from tests.server.test_verification import API, JPEG, enrol

CHAT = 6060001


async def _phone(ctx, patient_id):
    async with ctx.uow(read_only=True) as uow:
        return (await uow.patients.get(patient_id)).phone


async def test_after_withdrawal_the_face_route_says_no_reference_and_the_code_still_verifies(client, ctx, tenants):
    a, _ = tenants
    await enrol(ctx, a)
    earlier = await add_visit(ctx, a)
    matched = await client.post(f"{API}/visits/{earlier.id}/face", data=fake_frame("face", "asel"),
                                headers={**a.h("webcam"), **JPEG})
    assert await matched.json() == {"decision": "match"}
    await link_chat_by_phone(ctx, CHAT, await _phone(ctx, a.patient_ids[0]), "kk")
    await withdraw_consent(ctx, CHAT)

    visit = await add_visit(ctx, a)
    refused = await client.post(f"{API}/visits/{visit.id}/face", data=fake_frame("face", "asel"),
                                headers={**a.h("webcam"), **JPEG})
    assert refused.status == 409 and (await refused.json())["code"] == "no_reference"
    issued = await codes.issue_code(ctx, visit.id)
    verified = await client.post(f"{API}/visits/{visit.id}/code", json={"code": issued.code}, headers=a.h("webcam"))
    assert (await verified.json())["result"] == "verified"
    # the visit verified by face before the withdrawal keeps its evidence: withdrawal buries nothing
    before = await client.get(f"{API}/visits/{earlier.id}", headers=a.h())
    assert (await before.json())["verified_by"] == "face"
    # and the clinic cannot put a face back without a new consent
    again = await client.put(f"{API}/patients/{a.patient_ids[0]}/face", data=images(fake_frame("face", "mallory")),
                             headers=a.h())
    assert again.status == 409 and (await again.json())["code"] == "consent_missing"


async def test_the_clinic_has_no_way_to_withdraw_for_the_patient_and_its_revocation_is_told(client, ctx, tenants):
    a, _ = tenants
    paths = json.dumps(DOCUMENT["paths"]).lower()
    assert "withdraw" not in paths and "consent_withdrawn" not in paths  # /withdraw is the patient's alone
    await enrol(ctx, a)
    await link_chat_by_phone(ctx, CHAT, await _phone(ctx, a.patient_ids[0]), "ru")
    revoked = await client.delete(f"{API}/patients/{a.patient_ids[0]}/face", headers=a.h())
    assert await revoked.json() == {"revoked": 1}
    async with ctx.uow(read_only=True) as uow:
        told = [json.loads(m.payload) for m in await uow.outbox.pending(kind=OutboxKind.CHANGE_NOTICE)]
        kinds = [(await uow.patient_changes.get(m["change_id"])).kind for m in told if m["chat_id"] == CHAT]
    assert "face_revoked" in kinds and "consent_withdrawn" not in kinds
    # a clinic's revocation is no withdrawal: the face route says not_enrolled, not no_reference
    visit = await add_visit(ctx, a)
    refused = await client.post(f"{API}/visits/{visit.id}/face", data=fake_frame("face", "asel"),
                                headers={**a.h("webcam"), **JPEG})
    assert (await refused.json())["code"] == "not_enrolled"


async def test_metrics_count_every_purge(client, ctx, tenants):
    import datetime as dt

    from core.services.retention import purge

    a, _ = tenants
    async with ctx.uow() as uow:
        await uow.idempotency.add(clinic_id=a.clinic_id, key="k1", request_hash="h", status=201, body="{}",
                                  now=ctx.clock.now())
        await uow.commit()
    before = await (await client.get("/metrics")).text()
    assert 'rastau_purged_rows_total{kind="idempotency"}' not in before
    ctx.clock.advance(dt.timedelta(days=2))
    await purge(ctx)
    after = await (await client.get("/metrics")).text()
    assert 'rastau_purged_rows_total{kind="idempotency"} 1.0' in after
    assert 'rastau_purge_runs_total{kind="idempotency"} 1.0' in after
