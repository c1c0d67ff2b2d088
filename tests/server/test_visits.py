"""Visits over HTTP: create with Idempotency-Key, list by day/doctor/status, read with events, cancel."""
from __future__ import annotations

import asyncio
import datetime as dt

from sqlalchemy import func, select

from core.db import tables as t
from core.model import VisitMode
from core.services import visits
from tests.server.conftest import add_visit

API = "/api/v1"


def visit_body(tenant, **overrides) -> dict:
    return {"doctor_id": tenant.doctor_id, "patient_id": tenant.patient_ids[0], "start": "2026-11-25T10:00:00+05:00",
            "duration_minutes": 20, "mode": "in_person", "service_code": "A01.001", **overrides}


async def count_visits(ctx) -> int:
    async with ctx.uow() as uow:
        return (await uow.conn.execute(select(func.count()).select_from(t.visits))).scalar_one()


async def test_create_visit(client, tenants):
    a, _ = tenants
    response = await client.post(f"{API}/visits", json=visit_body(a, mode="online"), headers=a.h())
    assert response.status == 201
    body = await response.json()
    assert response.headers["Location"] == f"{API}/visits/{body['id']}"
    assert body["state"] == "scheduled" and body["verification_methods"] == ["code"]
    assert body["start"] == "2026-11-25T05:00:00+00:00" and body["start_local"] == "2026-11-25T10:00:00+05:00"


async def test_idempotency_key_replays_the_first_answer_and_keeps_one_row(client, ctx, tenants):
    a, _ = tenants
    headers = {**a.h(), "Idempotency-Key": "mis-visit-42"}
    first = await client.post(f"{API}/visits", json=visit_body(a), headers=headers)
    reordered = dict(reversed(list(visit_body(a).items())))
    again = await client.post(f"{API}/visits", json=reordered, headers=headers)
    assert (first.status, again.status) == (201, 201)
    assert await again.read() == await first.read()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await count_visits(ctx) == 1
    conflict = await client.post(f"{API}/visits", json=visit_body(a, duration_minutes=30), headers=headers)
    assert conflict.status == 409 and (await conflict.json())["code"] == "idempotency_key_reused"
    assert await count_visits(ctx) == 1


async def test_concurrent_twins_with_one_key_make_one_visit(client, ctx, tenants):
    a, _ = tenants
    headers = {**a.h(), "Idempotency-Key": "twin"}
    responses = await asyncio.gather(*(client.post(f"{API}/visits", json=visit_body(a), headers=headers)
                                       for _ in range(4)))
    bodies = {await r.read() for r in responses}
    assert [r.status for r in responses] == [201] * 4 and len(bodies) == 1
    assert await count_visits(ctx) == 1


async def test_idempotency_keys_are_per_clinic(client, tenants):
    a, b = tenants
    one = await client.post(f"{API}/visits", json=visit_body(a), headers={**a.h(), "Idempotency-Key": "k"})
    two = await client.post(f"{API}/visits", json=visit_body(b), headers={**b.h(), "Idempotency-Key": "k"})
    assert (one.status, two.status) == (201, 201)
    assert (await one.json())["id"] != (await two.json())["id"]


async def test_bad_visit_bodies(client, tenants):
    a, _ = tenants
    for body, field in [(visit_body(a, start="2026-11-25T10:00:00"), "start"),
                        (visit_body(a, duration_minutes=0), "duration_minutes"),
                        (visit_body(a, mode="video"), "mode"),
                        (visit_body(a, doctor_id="1"), "doctor_id")]:
        response = await client.post(f"{API}/visits", json=body, headers=a.h())
        assert response.status == 422, body
        assert field in (await response.json())["detail"]
    too_long = await client.post(f"{API}/visits", json=visit_body(a), headers={**a.h(), "Idempotency-Key": "x" * 201})
    assert too_long.status == 422


async def test_list_by_local_day_doctor_and_status(client, ctx, clock, tenants):
    a, _ = tenants
    first = await add_visit(ctx, a)  # 09:05 Almaty on 2026-11-25
    second = await add_visit(ctx, a, doctor_id=a.other_doctor_id, mode=VisitMode.ONLINE)
    late = await add_visit(ctx, a, start_in=dt.timedelta(hours=15))  # 00:00 on the 26th in Almaty
    await visits.cancel_visit(ctx, a.clinic_id, second.id)

    async def ids(query: str) -> list[int]:
        response = await client.get(f"{API}/visits?{query}", headers=a.h("admin"))
        assert response.status == 200
        return [v["id"] for v in (await response.json())["visits"]]

    assert await ids("date=2026-11-25") == [first.id, second.id]
    assert await ids("") == [first.id, second.id]  # today in Almaty
    assert await ids("date=2026-11-26") == [late.id]
    assert await ids(f"date=2026-11-25&doctor_id={a.other_doctor_id}") == [second.id]
    assert await ids("date=2026-11-25&status=cancelled") == [second.id]
    for bad in ("date=25.11.2026", "status=lost", "doctor_id=abc", "limit=0"):
        response = await client.get(f"{API}/visits?{bad}", headers=a.h())
        assert response.status == 422 and (await response.json())["code"] == "invalid_query"


async def test_get_visit_with_events_and_answer(client, ctx, clock, tenants):
    a, _ = tenants
    visit = await add_visit(ctx, a, mode=VisitMode.ONLINE)
    response = await client.get(f"{API}/visits/{visit.id}", headers=a.h("webcam"))
    body = await response.json()
    assert response.status == 200
    assert [e["step"] for e in body["events"]] == ["register"]
    assert body["patient_answer"] == {"answer": "none", "answered_at": None, "dispute_reason": None}


async def test_cancel_then_cancel_again_is_409(client, ctx, tenants):
    a, _ = tenants
    visit = await add_visit(ctx, a)
    response = await client.post(f"{API}/visits/{visit.id}/cancel", json={"reason": "patient called"}, headers=a.h())
    assert response.status == 200 and (await response.json())["state"] == "cancelled"
    again = await client.post(f"{API}/visits/{visit.id}/cancel", headers=a.h())
    assert again.status == 409 and (await again.json())["code"] == "illegal_transition"


async def test_unknown_and_oversized_ids_are_404(client, tenants):
    a, _ = tenants
    for path in ("/visits/424242", "/visits/99999999999", "/visits/abc", "/nowhere"):
        response = await client.get(API + path, headers=a.h())
        assert response.status == 404 and response.content_type == "application/problem+json", path
    wrong_method = await client.patch(f"{API}/visits/1", headers=a.h())
    assert wrong_method.status == 405 and "Allow" in wrong_method.headers


async def test_dates_at_the_edges_of_time_are_422_not_overflows(client, tenants):
    a, _ = tenants
    for start in ("0001-01-01T00:00:00+05:00", "9999-12-31T23:59:00-05:00"):
        response = await client.post(f"{API}/visits", json=visit_body(a, start=start), headers=a.h())
        assert response.status == 422 and "year" in (await response.json())["detail"]
    for day in ("0001-01-01", "9999-12-31"):
        for path in ("visits", "digest"):
            response = await client.get(f"{API}/{path}?date={day}", headers=a.h("admin"))
            assert response.status == 422, (path, day)
