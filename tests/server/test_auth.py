"""API keys, scopes and tenant isolation. The isolation tests walk the app's route table, so a new route that
forgets its clinic check (or has no probe here) fails them."""
from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp
import pytest
from sqlalchemy import select

from core.db import tables as t
from core.errors import InvalidValue
from core.model import VisitMode
from core.services import api_keys
from server.auth import access_of
from tests.server.conftest import add_visit
from tests.server.support import auditor_key, bearer, fake_frame

API = "/api/v1"


@dataclass
class Probe:
    """A well-formed call of one route against one clinic's records."""
    path: str
    json: dict | None = None
    data: bytes | None = None
    headers: dict = field(default_factory=dict)
    image_form: bool = False
    foreign: bool = True  # names a record by id: another clinic's key must get 404


def probes(tenant, visit) -> dict[tuple[str, str], Probe]:
    patient, visit_id = tenant.patient_ids[0], visit.id
    return {
        ("POST", f"{API}/patients"): Probe(f"{API}/patients", json={
            "iin": "880725400129", "full_name": "Probe Patient", "phone": "+77079998877"}, foreign=False),
        ("POST", f"{API}/patients/{{patient_id}}/consent"): Probe(f"{API}/patients/{patient}/consent",
                                                                  json={"recorded_by": "Nurse"}),
        ("PUT", f"{API}/patients/{{patient_id}}/face"): Probe(f"{API}/patients/{patient}/face", image_form=True),
        ("DELETE", f"{API}/patients/{{patient_id}}/face"): Probe(f"{API}/patients/{patient}/face"),
        ("POST", f"{API}/visits"): Probe(f"{API}/visits", json={
            "doctor_id": tenant.doctor_id, "patient_id": patient, "start": "2026-11-25T10:00:00+05:00",
            "duration_minutes": 15, "mode": "online", "service_code": "B01"}),
        ("GET", f"{API}/visits"): Probe(f"{API}/visits?date=2026-11-25", foreign=False),
        ("GET", f"{API}/visits/{{visit_id}}"): Probe(f"{API}/visits/{visit_id}"),
        ("POST", f"{API}/visits/{{visit_id}}/cancel"): Probe(f"{API}/visits/{visit_id}/cancel", json={}),
        ("POST", f"{API}/visits/{{visit_id}}/face"): Probe(f"{API}/visits/{visit_id}/face",
                                                          data=fake_frame("face", "x"),
                                                          headers={"Content-Type": "image/jpeg"}),
        ("POST", f"{API}/visits/{{visit_id}}/code"): Probe(f"{API}/visits/{visit_id}/code", json={"code": "123456"}),
        ("POST", f"{API}/visits/{{visit_id}}/code-requests"): Probe(f"{API}/visits/{visit_id}/code-requests"),
        ("POST", f"{API}/visits/{{visit_id}}/capture-sessions"): Probe(f"{API}/visits/{visit_id}/capture-sessions"),
        ("GET", f"{API}/audit/visits"): Probe(f"{API}/audit/visits?from=2026-11-25&to=2026-11-25"
                                              f"&clinic={tenant.clinic_id}"),
        ("GET", f"{API}/audit/flags"): Probe(f"{API}/audit/flags?from=2026-11-25&to=2026-11-25"
                                             f"&clinic={tenant.clinic_id}"),
        ("GET", f"{API}/digest"): Probe(f"{API}/digest?date=2026-11-25", foreign=False),
        ("GET", f"{API}/digest.csv"): Probe(f"{API}/digest.csv?date=2026-11-25", foreign=False),
    }


def protected_routes(app) -> list[tuple[str, str, frozenset]]:
    found = []
    for route in app.router.routes():
        access = access_of(route.handler)
        if route.method != "HEAD" and access is not None and access.scopes is not None:
            found.append((route.method, route.resource.canonical, access.scopes))
    return sorted(found, key=lambda r: (r[1], r[0]))


async def call(client, method: str, probe: Probe, key: str) -> aiohttp.ClientResponse:
    headers = {**bearer(key), **probe.headers}
    if probe.image_form:
        form = aiohttp.FormData()
        form.add_field("image", fake_frame("face", "probe"), filename="a.jpg", content_type="image/jpeg")
        return await client.request(method, probe.path, data=form, headers=headers)
    return await client.request(method, probe.path, json=probe.json, data=probe.data, headers=headers)


async def test_every_protected_route_has_a_probe(app, ctx, tenants):
    a, _ = tenants
    visit = await add_visit(ctx, a)
    missing = [(m, p) for m, p, _ in protected_routes(app) if (m, p) not in probes(a, visit)]
    assert not missing, f"add a tenant-isolation probe for: {missing}"


async def test_other_clinics_records_answer_404_on_every_route(app, client, ctx, tenants):
    a, b = tenants
    visit_b = await add_visit(ctx, b)
    a.keys["audit"] = await auditor_key(ctx, [a.clinic_id])  # an auditor of clinic A: B is not in its scope
    for method, path, scopes in protected_routes(app):
        probe = probes(b, visit_b)[(method, path)]
        key = a.keys[sorted(s.value for s in scopes)[0]]
        response = await call(client, method, probe, key)
        body = await response.text()
        if probe.foreign:
            assert response.status == 404, f"{method} {path}: {response.status} {body}"
            assert "Polyclinic B" not in body
        else:
            assert response.status < 400, f"{method} {path}: {response.status} {body}"
            assert "Polyclinic B" not in body and str(visit_b.id) not in _ids(body), f"{method} {path} leaks"
    view = await client.get(f"{API}/visits/{visit_b.id}", headers=b.h())
    assert (await view.json())["state"] == "scheduled"  # nothing of B's was changed


def _ids(body: str) -> list[str]:
    import json

    try:
        data = json.loads(body)
    except ValueError:
        return []
    return [str(v["id"]) for v in data.get("visits", [])] if isinstance(data, dict) else []


async def test_wrong_scope_answers_403_on_every_route(app, client, ctx, tenants):
    a, _ = tenants
    visit = await add_visit(ctx, a)
    checked = 0
    for method, path, scopes in protected_routes(app):
        for wrong in {"clinic_system", "webcam", "admin"} - {s.value for s in scopes}:
            response = await call(client, method, probes(a, visit)[(method, path)], a.keys[wrong])
            assert response.status == 403, f"{method} {path} with {wrong}: {response.status}"
            problem = await response.json()
            assert problem["code"] == "insufficient_scope"
            checked += 1
    assert checked >= 10


async def test_doctor_bound_key_cannot_touch_another_doctors_visit(app, client, ctx, tenants):
    a, _ = tenants
    other = await add_visit(ctx, a, doctor_id=a.other_doctor_id)
    for method, path, scopes in protected_routes(app):
        if "{visit_id}" not in path or not {s.value for s in scopes} & {"clinic_system", "webcam"}:
            continue
        response = await call(client, method, probes(a, other)[(method, path)], a.doctor_key)
        assert response.status == 404, f"{method} {path}: {response.status}"
    listed = await client.get(f"{API}/visits?date=2026-11-25", headers=bearer(a.doctor_key))
    assert [v["id"] for v in (await listed.json())["visits"]] == []
    created = await client.post(f"{API}/visits", headers=bearer(a.doctor_key), json={
        "doctor_id": a.other_doctor_id, "patient_id": a.patient_ids[0], "start": "2026-11-25T10:00:00+05:00",
        "duration_minutes": 15, "mode": "online", "service_code": "B01"})
    assert created.status == 404
    own = await add_visit(ctx, a, mode=VisitMode.ONLINE)
    assert (await client.get(f"{API}/visits/{own.id}", headers=bearer(a.doctor_key))).status == 200


@pytest.mark.parametrize("header", [None, "Bearer", "Basic abc", "Bearer rk_nothex_secret",
                                    "Bearer rk_0123456789ab_wrongsecret"])
async def test_missing_or_bad_key_answers_401_with_a_challenge(client, tenants, header):
    headers = {"Authorization": header} if header else {}
    response = await client.get(f"{API}/visits", headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.content_type == "application/problem+json"


async def test_revoked_key_is_refused_at_once(client, ctx, tenants):
    a, _ = tenants
    assert (await client.get(f"{API}/visits", headers=a.h())).status == 200
    await api_keys.revoke_api_key(ctx, api_keys.split_key(a.keys["clinic_system"]))
    assert (await client.get(f"{API}/visits", headers=a.h())).status == 401


async def test_only_a_keyed_hash_of_the_key_is_stored(ctx, tenants):
    a, _ = tenants
    made = await api_keys.create_api_key(ctx, a.clinic_id, ["webcam"], label="room 12")
    assert made.key.startswith(f"rk_{made.principal.key_prefix}_")
    async with ctx.uow() as uow:
        rows = (await uow.conn.execute(select(t.api_keys))).all()
    secret = made.key.removeprefix(f"rk_{made.principal.key_prefix}_")  # token_urlsafe: may itself hold "_"
    assert len(secret) >= 40
    assert not any(secret in str(tuple(row)) for row in rows)
    assert await api_keys.authenticate(ctx, made.key) == made.principal
    assert await api_keys.authenticate(ctx, made.key[:-1] + ("A" if made.key[-1] != "A" else "B")) is None


async def test_admin_keys_cannot_be_bound_to_a_doctor(ctx, tenants):
    a, _ = tenants
    with pytest.raises(InvalidValue):
        await api_keys.create_api_key(ctx, a.clinic_id, ["admin"], a.doctor_id)
