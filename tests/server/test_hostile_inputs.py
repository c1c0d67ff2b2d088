"""Smaller holes a hostile clinic system would try: formulas in the CSV, look-alike digits in path ids, invisible
characters in names, duplicate JSON keys, a patient update that silently resets the language, and headers that
give away versions or let proxies cache personal data."""
from __future__ import annotations

import csv
import datetime as dt
import io

import pytest
from sqlalchemy import update

from core.db import tables as t
from core.iin import make_iin
from core.services import registry
from tests.server.conftest import add_visit

API = "/api/v1"
FORMULAS = ['=HYPERLINK("http://x","y")', "+1", "-1", "@SUM(1)", "\tx", "\rx"]


async def test_digest_csv_keeps_formulas_as_text(client, ctx, tenants):
    a, _ = tenants
    for i, iin in enumerate(["021231500015", "880725400129", "991231300457", make_iin(dt.date(1990, 1, 1), True, 5)]):
        a.patient_ids.append((await registry.upsert_patient(ctx, a.clinic_id, iin, "Plain", f"+770533300{i:02d}"))
                             .patient.id)
    for index, name in enumerate(FORMULAS):
        async with ctx.uow() as uow:  # names stored before the name rule, or typed straight into the database
            await uow.conn.execute(update(t.patients).where(t.patients.c.id == a.patient_ids[index])
                                   .values(full_name=name))
            await uow.commit()
        await add_visit(ctx, a, patient=index)
    response = await client.get(f"{API}/digest.csv?date=2026-11-25", headers=a.h("admin"))
    assert response.status == 200
    rows = list(csv.DictReader(io.StringIO((await response.read()).decode("utf-8-sig"), newline="")))
    assert sorted(r["patient"] for r in rows) == sorted("'" + name for name in FORMULAS)


@pytest.mark.parametrize("path", ["/visits/١", "/visits/١٢", "/patients/١٢/face", "/visits/۱", "/visits/１"])
async def test_path_ids_take_ascii_digits_only(client, ctx, tenants, path):
    a, _ = tenants
    await add_visit(ctx, a)  # visit 1 exists: "١" must not reach it
    method = client.put if path.endswith("/face") else client.get
    response = await method(API + path, headers=a.h())
    assert response.status == 404
    assert (await response.json())["code"] == "route_not_found"


@pytest.mark.parametrize("name", ["Aigerim\r\nS.", "Aigerim\tS.", "Ai\u202egerim", "Ai\u200bgerim", "A\u2028B",
                                  "A\u2066B\u2069", "A\x85B"])
async def test_names_with_control_or_bidi_characters_are_refused(client, tenants, name):
    a, _ = tenants
    response = await client.post(f"{API}/patients", headers=a.h(),
                                 json={"iin": "880725400129", "full_name": name, "phone": "87071234567"})
    assert response.status == 422
    problem = await response.json()
    assert problem["field"] == "full_name" and "full_name" in problem["detail"]


async def test_staff_names_are_held_to_the_same_rule(ctx, tenants):
    from core.errors import InvalidValue

    a, _ = tenants
    with pytest.raises(InvalidValue, match="full_name"):
        await registry.add_doctor(ctx, a.clinic_id, "Dr\u202e Evil", "+77019990001")
    with pytest.raises(InvalidValue, match="full_name"):
        await registry.add_admin(ctx, a.clinic_id, "Admin\nTwo", "+77019990002")


async def test_duplicate_json_keys_are_refused_naming_the_key(client, tenants):
    a, _ = tenants
    raw = b'{"iin": "880725400129", "full_name": "A", "phone": "87071234567", "language": "kk", "language": "ru"}'
    response = await client.post(f"{API}/patients", data=raw,
                                 headers={**a.h(), "Content-Type": "application/json"})
    assert response.status == 422
    problem = await response.json()
    assert problem["code"] == "invalid_json" and "'language'" in problem["detail"]
    nested = await client.post(f"{API}/visits/1/code", data=b'{"code": "123456", "code": "654321"}',
                               headers={**a.h(), "Content-Type": "application/json"})
    assert nested.status == 422 and (await nested.json())["code"] == "invalid_json"


async def test_leaving_language_out_keeps_the_stored_one(client, tenants):
    a, _ = tenants
    patient = {"iin": "880725400129", "full_name": "Aigerim S.", "phone": "87071234567"}
    created = await client.post(f"{API}/patients", json={**patient, "language": "kk"}, headers=a.h())
    assert (await created.json())["language"] == "kk"
    updated = await client.post(f"{API}/patients", json={**patient, "full_name": "Aigerim Seitova"}, headers=a.h())
    assert updated.status == 200 and (await updated.json())["language"] == "kk"
    new = await client.post(f"{API}/patients", json={**patient, "iin": "991231300457", "phone": "87071234568"},
                            headers=a.h())
    assert new.status == 201 and (await new.json())["language"] == "ru"  # a new patient still defaults to ru


@pytest.mark.parametrize("path, scope", [("/visits?date=2026-11-25", "clinic_system"), ("/visits/1", "clinic_system"),
                                         ("/digest.csv?date=2026-11-25", "admin"), ("/visits/999999", "admin")])
async def test_no_versions_and_nothing_cacheable(client, ctx, tenants, path, scope):
    a, _ = tenants
    await add_visit(ctx, a)
    response = await client.get(API + path, headers=a.h(scope))
    assert response.headers.get("Cache-Control") == "no-store"
    assert "aiohttp" not in response.headers.get("Server", "") and "Python" not in response.headers.get("Server", "")


async def test_head_is_not_served_and_405_is_a_problem(client):
    from server.openapi import DOCUMENT

    head = await client.head("/healthz")
    assert head.status == 405 and head.headers["Allow"] == "GET"
    wrong = await client.delete(f"{API}/digest")
    assert wrong.status == 405 and wrong.content_type == "application/problem+json"
    assert (await wrong.json())["code"] == "method_not_allowed"
    assert "Problem405" in DOCUMENT["components"]["responses"]
    assert all("head" not in ops for ops in DOCUMENT["paths"].values())
