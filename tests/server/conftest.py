"""Server fixtures: the app on the test database (SQLite file and PostgreSQL) with a fake face analyser, every
response checked against the OpenAPI document, and two clinics with keys for every scope."""
from __future__ import annotations

import datetime as dt

import pytest

from core.model import VisitMode
from core.services import visits
from server.app import create_app
from tests.server.support import CLINIC_A_IINS, CLINIC_B_IINS, Conformance, FakeAnalyser, Tenant, make_tenant
from tests.worlds import built_once


@pytest.fixture
def faces():
    return FakeAnalyser()


@pytest.fixture
def conformance():
    checker = Conformance()
    yield checker
    assert not checker.failures, "responses disagree with the OpenAPI document:\n" + "\n".join(checker.failures)


@pytest.fixture
async def app(settings, ctx, faces, conformance):
    application = create_app(settings, ctx=ctx, face_pool=faces)
    application.middlewares.insert(0, conformance.middleware())
    return application


@pytest.fixture
async def client(aiohttp_client, app):
    return await aiohttp_client(app)


async def _tenants(ctx) -> tuple[Tenant, Tenant]:
    a = await make_tenant(ctx, "Polyclinic A", CLINIC_A_IINS, 1110000)
    b = await make_tenant(ctx, "Polyclinic B", CLINIC_B_IINS, 2220000)
    return a, b


@pytest.fixture
async def tenants(ctx) -> tuple[Tenant, Tenant]:
    """Two clinics with doctors, patients and keys (built once per process: tests/worlds.py)."""
    return await built_once(ctx, _tenants)


async def add_visit(ctx, tenant, *, mode=VisitMode.IN_PERSON, doctor_id=None, patient=0,
                    start_in=dt.timedelta(minutes=5)):
    return await visits.register_visit(
        ctx, clinic_id=tenant.clinic_id, doctor_id=doctor_id or tenant.doctor_id,
        patient_id=tenant.patient_ids[patient], start=ctx.clock.now() + start_in,
        duration=dt.timedelta(minutes=20), mode=mode, service_code="A01.001")
