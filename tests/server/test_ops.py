"""Health, readiness, metrics, digests, logging hygiene and the error envelope for the unexpected."""
from __future__ import annotations

import asyncio
import csv
import io
import logging
import re

import aiohttp
import pytest
from aiohttp import web

from core.clock import ManualClock
from core.db.engine import create_engine
from core.db.uow import UnitOfWorkFactory
from core.logs import configure_logging
from core.model import VisitMode
from core.services import Context, codes, visits
from server.app import create_app
from server.appkeys import CTX
from server.auth import public
from tests import conftest as root_conftest
from tests.conftest import PG_URL, T0, log_as_the_product
from tests.server.conftest import add_visit
from tests.server.support import FakeAnalyser, TcpProxy, fake_frame
from tests.server.test_verification import enrol

API = "/api/v1"


async def test_healthz_and_readyz(client):
    assert await (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["status"] == "ready"


async def test_readyz_is_503_while_face_workers_warm_up(client, faces):
    faces.ready = False
    response = await client.get("/readyz")
    assert response.status == 503
    assert await response.json() == {"status": "unready", "database": "ok", "face_workers": "starting"}


def _unreachable_app() -> web.Application:
    settings = root_conftest.test_settings("postgresql+asyncpg://postgres@127.0.0.1:1/test")
    ctx = Context.build(settings, UnitOfWorkFactory(create_engine(settings.database_url)), ManualClock(T0))
    return create_app(settings, ctx=ctx, face_pool=FakeAnalyser())


async def test_database_unreachable_is_503_problem_not_500(aiohttp_client):
    client = await aiohttp_client(_unreachable_app())
    response = await client.get(f"{API}/visits", headers={"Authorization": "Bearer rk_0123456789ab_secret"})
    assert response.status == 503
    problem = await response.json()
    assert problem["code"] == "database_unavailable" and response.headers["Retry-After"]
    assert "127.0.0.1" not in problem["detail"] and "asyncpg" not in problem["detail"]
    ready = await client.get("/readyz")
    assert ready.status == 503 and (await ready.json())["database"] == "unreachable"
    await client.app[CTX].uow.engine.dispose()


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_readyz_and_api_recover_after_a_database_outage_without_restart(aiohttp_client, engine, db_url,
                                                                             settings, tenants):
    from sqlalchemy.engine import make_url

    a, _ = tenants
    target = make_url(PG_URL)
    proxy = TcpProxy(target.host, target.port or 5432)
    await proxy.start()
    url = db_url.replace(f"{target.host}:{target.port or 5432}", f"127.0.0.1:{proxy.port}")
    settings = settings.model_copy(update={"database_url": url})  # the same secrets: the keys stay valid
    ctx = Context.build(settings, UnitOfWorkFactory(create_engine(url)), ManualClock(T0))
    client = await aiohttp_client(create_app(settings, ctx=ctx, face_pool=FakeAnalyser()))
    try:
        assert (await client.get("/readyz")).status == 200
        assert (await client.get(f"{API}/visits", headers=a.h())).status == 200
        await proxy.cut()
        assert (await client.get("/readyz")).status == 503
        down = await client.get(f"{API}/visits", headers=a.h())
        assert down.status == 503 and down.content_type == "application/problem+json"
        await proxy.start()
        assert (await client.get("/readyz")).status == 200
        assert (await client.get(f"{API}/visits", headers=a.h())).status == 200
    finally:
        await ctx.uow.engine.dispose()
        await proxy.cut()


async def test_metrics_count_requests_face_decisions_and_code_outcomes(client, ctx, tenants):
    a, _ = tenants
    await enrol(ctx, a)
    visit = await add_visit(ctx, a)
    await client.get(f"{API}/visits/{visit.id}", headers=a.h())
    await client.get(f"{API}/visits/424242", headers=a.h())
    await client.post(f"{API}/visits/{visit.id}/face", data=fake_frame("face", "bob"),
                      headers={**a.h("webcam"), "Content-Type": "image/jpeg"})
    await client.post(f"{API}/visits/{visit.id}/code", json={"code": "123456"}, headers=a.h("webcam"))
    text = await (await client.get("/metrics")).text()
    assert 'rastau_http_requests_total{method="GET",route="/api/v1/visits/{visit_id}",status="200"} 1.0' in text
    assert 'rastau_http_requests_total{method="GET",route="/api/v1/visits/{visit_id}",status="404"} 1.0' in text
    assert 'rastau_http_request_duration_seconds_bucket{le="0.5",method="GET",route="/api/v1/visits/{visit_id}"' in text
    assert 'rastau_face_decisions_total{decision="no_match"} 1.0' in text
    assert 'rastau_code_outcomes_total{outcome="no_code"} 1.0' in text
    assert "/visits/424242" not in text  # route templates, never raw paths


async def test_digest_json_and_csv(client, ctx, tenants):
    a, _ = tenants
    await enrol(ctx, a)
    verified = await add_visit(ctx, a)
    await client.post(f"{API}/visits/{verified.id}/face", data=fake_frame("face", "asel"),
                      headers={**a.h("webcam"), "Content-Type": "image/jpeg"})
    cancelled = await add_visit(ctx, a, mode=VisitMode.ONLINE, patient=1)
    await visits.cancel_visit(ctx, a.clinic_id, cancelled.id)
    data = await (await client.get(f"{API}/digest?date=2026-11-25", headers=a.h("admin"))).json()
    assert data["clinic_name"] == "Polyclinic A" and data["date"] == "2026-11-25"
    assert data["totals"]["visits"] == 1 and data["totals"]["face_verified"] == 1
    assert data["totals"]["cancelled"] == 1
    response = await client.get(f"{API}/digest.csv?date=2026-11-25", headers=a.h("admin"))
    assert response.status == 200 and response.content_type == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO((await response.read()).decode("utf-8-sig"))))
    assert {r["visit_id"] for r in rows} == {str(verified.id), str(cancelled.id)}
    assert all(re.fullmatch(r"\*{8}\d{4}", r["iin"]) for r in rows)
    bad = await client.get(f"{API}/digest?date=yesterday", headers=a.h("admin"))
    assert bad.status == 422


async def test_unexpected_errors_are_500_problems_without_internals(aiohttp_client, settings, ctx, faces, capsys):
    @public
    async def broken(_request):
        raise RuntimeError("SELECT secret FROM internals")

    app = create_app(settings, ctx=ctx, face_pool=faces)
    app.router.add_get("/broken", broken)
    client = await aiohttp_client(app)
    response = await client.get("/broken", headers={"X-Request-ID": "req-123"})
    assert response.status == 500
    problem = await response.json()
    assert problem["code"] == "internal_error" and problem["request_id"] == "req-123"
    assert "SELECT" not in await response.text() and response.headers["X-Request-ID"] == "req-123"


async def test_logs_carry_one_access_line_per_request_and_no_iin_code_or_key(client, ctx, tenants, capsys):
    a, _ = tenants
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    configure_logging("INFO", "json")
    try:
        iin = "880725400129"
        await client.post(f"{API}/patients", json={"iin": iin, "full_name": "Log Test", "phone": "+77071112233"},
                          headers=a.h())
        await client.post(f"{API}/patients", json={"iin": "880725400128", "full_name": "X", "phone": "+77071112233"},
                          headers=a.h())
        visit = await add_visit(ctx, a)
        issued = await codes.issue_code(ctx, visit.id)
        await client.post(f"{API}/visits/{visit.id}/code", json={"code": issued.code}, headers=a.h())
        await client.get(f"{API}/visits", headers={"Authorization": "Bearer rk_0123456789ab_notarealkey"})
        await asyncio.sleep(0)
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        log_as_the_product()  # structlog too: the next test in this process must not log into this test's capture
    logged = capsys.readouterr().err
    access = [line for line in logged.splitlines() if '"event": "request"' in line]
    assert len(access) == 4
    assert all('"route":' in line and '"status":' in line and '"ms":' in line and '"request_id":' in line
               for line in access)
    for secret in (iin, "880725400128", issued.code, a.keys["clinic_system"], "notarealkey"):
        assert secret not in logged


async def test_requests_in_flight_finish_before_the_app_shuts_down(settings, ctx, tenants, unused_tcp_port):
    entered, gate = asyncio.Event(), asyncio.Event()

    class SlowAnalyser(FakeAnalyser):
        async def analyse(self, data: bytes):
            entered.set()
            await gate.wait()
            return await super().analyse(data)

    a, _ = tenants
    await enrol(ctx, a)
    visit = await add_visit(ctx, a)
    runner = web.AppRunner(create_app(settings, ctx=ctx, face_pool=SlowAnalyser()), shutdown_timeout=10)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    async with aiohttp.ClientSession() as session:
        in_flight = asyncio.create_task(session.post(
            f"http://127.0.0.1:{unused_tcp_port}{API}/visits/{visit.id}/face", data=fake_frame("face", "asel"),
            headers={**a.h("webcam"), "Content-Type": "image/jpeg"}))
        await entered.wait()
        closing = asyncio.create_task(runner.cleanup())
        await asyncio.sleep(0.2)
        assert not closing.done()  # shutdown waits for the frame being analysed
        gate.set()
        response = await in_flight
        assert response.status == 200 and await response.json() == {"decision": "match"}
        await closing


async def test_request_ids_made_here_are_distinct_and_unique_to_a_process(client):
    """An id the client did not offer is made by the server: 32 safe characters, never the same twice, and a
    forked process (another server process) makes its own."""
    from server import observe

    ids = [(await client.get("/healthz")).headers["X-Request-ID"] for _ in range(3)]
    assert len(set(ids)) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    observe._new_process_tag()  # what a forked child runs first (os.register_at_fork)
    forked = observe.new_request_id()
    assert forked[:16] != ids[0][:16] and forked not in ids
