"""Code guessing: the per-visit attempt cap (RASTAU_CODE_MAX_ATTEMPTS, 5) and the hourly caps on wrong codes
per doctor (RASTAU_DOCTOR_CODE_FAILURES_PER_HOUR, 20) and per clinic (RASTAU_CLINIC_CODE_FAILURES_PER_HOUR,
100) stop a guesser at exactly the cap — under concurrent requests, across visits and doctors, and across two
`python -m server` processes sharing one PostgreSQL schema. Once a visit is locked or a doctor or clinic is
capped, even the right code is refused, so a capped answer never tells a guesser whether the guess was right.
"""
from __future__ import annotations

import asyncio
import collections
import datetime as dt
import itertools

import aiohttp
import pytest
from sqlalchemy import text

from core.config import Settings
from core.services import Context, api_keys, codes, registry, visits
from server.app import create_app
from tests.conftest import pg_schema
from tests.security.support import Seeded, ServerProcess, new_secrets, pinned_clock_offset
from tests.server.conftest import add_visit

API = "/api/v1"


def wrong_for(code: str, n: int = 1) -> str:
    return f"{(int(code) + n) % 10**6:06d}"


def outcome(status: int, body: dict) -> str:
    return f"{status} {body.get('result') if status == 200 else body.get('code')}"


async def _post_code(client, url: str, code: str, headers: dict) -> tuple[int, dict, dict]:
    response = await client.post(url, json={"code": code}, headers=headers)
    return response.status, await response.json(), dict(response.headers)


async def _attempts(ctx, visit_id: int) -> int:
    async with ctx.uow(read_only=True) as uow:
        return await uow.visits.code_attempts(visit_id)


async def _doctor_failures(ctx, doctor_id: int) -> int:
    async with ctx.uow(read_only=True) as uow:
        now = ctx.clock.now()
        return await uow.codes.doctor_failures(doctor_id, now.replace(minute=0, second=0, microsecond=0))


async def _clinic_failures(ctx, clinic_id: int) -> int:
    async with ctx.uow(read_only=True) as uow:
        now = ctx.clock.now()
        return await uow.codes.clinic_failures(clinic_id, now.replace(minute=0, second=0, microsecond=0))


# --- one server process (the app in the test's event loop), SQLite and PostgreSQL ---------------------------

async def test_concurrent_wrong_codes_on_one_visit_count_exactly_the_cap(client, ctx, tenants):
    a, _ = tenants
    cap = ctx.settings.code_max_attempts
    visit = await add_visit(ctx, a)
    issued = await codes.issue_code(ctx, visit.id)
    url = f"{API}/visits/{visit.id}/code"
    answers = await asyncio.gather(*(_post_code(client, url, wrong_for(issued.code, n), a.h("webcam"))
                                     for n in range(1, 21)))
    counted = collections.Counter(outcome(status, body) for status, body, _ in answers)
    assert counted == {"200 wrong": cap, "429 code_locked": 20 - cap}
    assert sorted(body["attempts_left"] for status, body, _ in answers if status == 200) == list(range(cap))
    assert await _doctor_failures(ctx, a.doctor_id) == cap  # locked attempts are not failures of the doctor

    status, body, _ = await _post_code(client, url, issued.code, a.h("webcam"))
    assert (status, body["code"], body["attempts_left"]) == (429, "code_locked", 0)
    assert issued.code not in str(body)
    assert (await visits.get_visit(ctx, a.clinic_id, visit.id)).visit.state.value == "scheduled"


async def test_guessing_spread_over_visits_stops_at_the_doctors_hourly_cap(client, ctx, clock, tenants):
    a, _ = tenants
    cap = ctx.settings.doctor_code_failures_per_hour
    per_visit = ctx.settings.code_max_attempts - 1  # below the visit cap: only the doctor's cap can stop them
    spread = [await add_visit(ctx, a) for _ in range(cap // per_visit + 5)]
    issued = {v.id: (await codes.issue_code(ctx, v.id)).code for v in spread}
    answers = await asyncio.gather(*(
        _post_code(client, f"{API}/visits/{v.id}/code", wrong_for(issued[v.id], n), a.h("webcam"))
        for n in range(1, per_visit + 1) for v in spread))
    counted = collections.Counter(outcome(status, body) for status, body, _ in answers)
    assert counted == {"200 wrong": cap, "429 doctor_code_cap": len(answers) - cap}
    assert await _doctor_failures(ctx, a.doctor_id) == cap
    assert sum([await _attempts(ctx, v.id) for v in spread]) == cap  # a capped check is not even an attempt
    capped = next(headers for status, _, headers in answers if status == 429)
    assert 0 < int(capped["Retry-After"]) <= 3601

    # the right code for a fresh visit of the capped doctor is refused too; the other doctor is unaffected
    assert await _right_code(client, ctx, a) == (429, "doctor_code_cap")
    assert await _right_code(client, ctx, a, a.other_doctor_id) == (200, "verified")
    # the cap is per clock hour: in the next hour the same doctor's right code verifies again
    clock.advance(dt.timedelta(hours=1))
    assert await _right_code(client, ctx, a) == (200, "verified")


async def test_guessing_across_doctors_stops_at_each_doctors_cap(client, ctx, tenants):
    """Spreading guesses over doctors buys the guesser exactly one cap per doctor, no more."""
    a, b = tenants
    cap = ctx.settings.doctor_code_failures_per_hour
    doctors = [a.doctor_id, a.other_doctor_id]
    _, answers = await _guess_over_doctors(client, ctx, a, doctors, visits_each=cap // 4 + 3)
    counted = collections.Counter(outcome(status, body) for status, body, _ in answers)
    assert counted == {"200 wrong": cap * len(doctors), "429 doctor_code_cap": len(answers) - cap * len(doctors)}
    assert [await _doctor_failures(ctx, d) for d in doctors] == [cap, cap]
    assert await _right_code(client, ctx, b) == (200, "verified")  # another clinic's doctor is untouched


async def _guess_over_doctors(client, ctx, tenant, doctors: list[int], visits_each: int, guesses_each: int = 4):
    """Wrong codes, all at once: ``guesses_each`` for each of ``visits_each`` fresh visits of every doctor."""
    spread = [await add_visit(ctx, tenant, doctor_id=d) for d in doctors for _ in range(visits_each)]
    issued = {v.id: (await codes.issue_code(ctx, v.id)).code for v in spread}
    answers = await asyncio.gather(*(
        _post_code(client, f"{API}/visits/{v.id}/code", wrong_for(issued[v.id], n), tenant.h("webcam"))
        for n in range(1, guesses_each + 1) for v in spread))
    return spread, answers


async def _right_code(client, ctx, tenant, doctor_id: int | None = None) -> tuple[int, str]:
    """A fresh visit's right code, as the clinic would enter it: (status, result or problem code)."""
    visit = await add_visit(ctx, tenant, doctor_id=doctor_id)
    code = (await codes.issue_code(ctx, visit.id)).code
    status, body, _ = await _post_code(client, f"{API}/visits/{visit.id}/code", code, tenant.h("webcam"))
    assert code not in str(body)
    return status, body.get("result") if status == 200 else body["code"]


async def test_guessing_spread_over_doctors_stops_at_the_clinics_hourly_cap(aiohttp_client, settings, ctx, clock,
                                                                            tenants, faces, conformance):
    """Doctors enough to guess N × 20 an hour still get only the clinic's cap, counted exactly under concurrency."""
    a, b = tenants
    clinic_cap, doctor_cap = 25, settings.doctor_code_failures_per_hour
    capped = Settings(_env_file=None, **{**settings.model_dump(), "clinic_code_failures_per_hour": clinic_cap})
    application = create_app(capped, ctx=Context.build(capped, ctx.uow, ctx.clock), face_pool=faces)
    application.middlewares.insert(0, conformance.middleware())
    client = await aiohttp_client(application)
    doctors = [a.doctor_id, a.other_doctor_id]
    assert clinic_cap < doctor_cap * len(doctors)  # without the clinic's cap the doctors' caps would allow more
    spread, answers = await _guess_over_doctors(client, ctx, a, doctors, visits_each=doctor_cap // 4 + 3)
    counted = collections.Counter(outcome(status, body) for status, body, _ in answers)
    assert counted["200 wrong"] == clinic_cap, counted
    assert set(counted) <= {"200 wrong", "429 clinic_code_cap", "429 doctor_code_cap"}, counted
    assert counted["429 clinic_code_cap"] > 0
    assert await _clinic_failures(ctx, a.clinic_id) == clinic_cap
    assert sum([await _doctor_failures(ctx, d) for d in doctors]) == clinic_cap
    assert sum([await _attempts(ctx, v.id) for v in spread]) == clinic_cap  # a capped check is not an attempt
    refused = next((body, headers) for status, body, headers in answers if body.get("code") == "clinic_code_cap")
    assert 0 < int(refused[1]["Retry-After"]) <= 3601 and "wrong codes this hour" in refused[0]["detail"]

    # a doctor who never guessed is stopped too, even with the right code; another clinic is untouched
    newcomer = await registry.add_doctor(ctx, a.clinic_id, "Newcomer", "+77019990001")
    assert await _right_code(client, ctx, a, newcomer.id) == (429, "clinic_code_cap")
    assert await _right_code(client, ctx, b) == (200, "verified")
    clock.advance(dt.timedelta(hours=1))  # the next clock hour opens the clinic again
    assert await _right_code(client, ctx, a, newcomer.id) == (200, "verified")


# --- two `python -m server` processes on one PostgreSQL schema -------------------------------------------
# The caps count per clock hour: the seeding Context and both servers run on the system clock shifted to the
# start of an hour (pinned_clock_offset), so the whole run falls in one hour and nothing waits for the turn.

@pytest.fixture
def shared_pg():
    with pg_schema() as url:
        yield url


async def _seed_shared(seeded: Seeded) -> dict:
    ctx = await seeded.open()
    try:
        start = ctx.clock.now() + dt.timedelta(minutes=5)
        clinic = await registry.create_clinic(ctx, "Two-process clinic")
        doctors = [await registry.add_doctor(ctx, clinic.id, f"Doctor {i}", f"+770100000{i:02d}") for i in range(6)]
        patient = (await registry.upsert_patient(ctx, clinic.id, "900101300017", "Patient", "+77050000001")).patient

        async def visit(doctor):
            v = await visits.register_visit(ctx, clinic_id=clinic.id, doctor_id=doctor.id, patient_id=patient.id,
                                            start=start, duration=dt.timedelta(minutes=30), mode="online",
                                            service_code="A01")
            return v.id, (await codes.issue_code(ctx, v.id)).code

        cap = ctx.settings.doctor_code_failures_per_hour
        return {"key": (await api_keys.create_api_key(ctx, clinic.id, ["webcam"], label="guesser")).key,
                "doctors": [d.id for d in doctors],
                "locked": await visit(doctors[0]),
                "spread": [await visit(doctors[1]) for _ in range(cap // 4 + 6)],
                "fresh": await visit(doctors[1]),
                "control": await visit(doctors[2]),
                "clinic_spread": [await visit(d) for d in doctors[3:5] for _ in range(cap // 4 + 2)],
                "newcomer": await visit(doctors[5])}
    finally:
        await seeded.close()


async def _count(url: str, sql: str, **params) -> int:
    seeded = Seeded(url, new_secrets(), migrated=True)  # the test's database, as its servers left it
    ctx = await seeded.open()
    try:
        async with ctx.uow(read_only=True) as uow:
            return (await uow.conn.execute(text(sql), params)).scalar_one()
    finally:
        await seeded.close()


@pytest.mark.slow  # two server processes
async def test_caps_hold_across_two_server_processes_sharing_postgresql(shared_pg, tmp_path):
    offset = pinned_clock_offset()
    seeded = Seeded(shared_pg, new_secrets(), clock_offset_seconds=offset)
    world = await _seed_shared(seeded)
    settings = seeded.ctx.settings
    visit_cap, doctor_cap = settings.code_max_attempts, settings.doctor_code_failures_per_hour
    clinic_cap = visit_cap + doctor_cap + 10  # room for steps 1 and 2, then ten more wrong codes in step 3
    servers = [ServerProcess(shared_pg, seeded.keys, tmp_path / f"s{i}", clock_offset_seconds=offset,
                             env_extra={"RASTAU_CLINIC_CODE_FAILURES_PER_HOUR": str(clinic_cap)}).start()
               for i in range(2)]
    try:
        await asyncio.gather(*(s.wait_ready("/healthz") for s in servers))  # codes need no face workers
        headers = {"Authorization": f"Bearer {world['key']}"}
        bases = itertools.cycle([s.base for s in servers])
        async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=0)) as session:
            async def post(visit_id: int, code: str, base: str | None = None) -> tuple[int, dict, str]:
                base = base or next(bases)
                async with session.post(f"{base}{API}/visits/{visit_id}/code", json={"code": code}) as response:
                    return response.status, await response.json(), base

            # 1. thirty concurrent wrong codes for one visit, alternating between the two servers
            locked_id, locked_code = world["locked"]
            answers = await asyncio.gather(*(post(locked_id, wrong_for(locked_code, n)) for n in range(1, 31)))
            counted = collections.Counter(outcome(status, body) for status, body, _ in answers)
            assert counted == {"200 wrong": visit_cap, "429 code_locked": 30 - visit_cap}, counted
            assert {base for *_, base in answers} == {s.base for s in servers}
            for server in servers:  # the right code after the lock, on either server
                status, body, _ = await post(locked_id, locked_code, server.base)
                assert (status, body["code"]) == (429, "code_locked")

            # 2. wrong codes spread over many visits of one doctor, below each visit's cap, across both servers
            spread = world["spread"]
            answers = await asyncio.gather(*(post(visit_id, wrong_for(code, n))
                                             for n in range(1, visit_cap) for visit_id, code in spread))
            counted = collections.Counter(outcome(status, body) for status, body, _ in answers)
            assert counted == {"200 wrong": doctor_cap, "429 doctor_code_cap": len(answers) - doctor_cap}, counted
            fresh_id, fresh_code = world["fresh"]
            for server in servers:
                status, body, _ = await post(fresh_id, fresh_code, server.base)
                assert (status, body["code"]) == (429, "doctor_code_cap")
            control_id, control_code = world["control"]  # the third doctor was never capped
            status, body, _ = await post(control_id, control_code)
            assert (status, body["result"]) == (200, "verified")

            # 3. two more doctors, each below their own cap: the clinic's cap stops them at its last ten
            answers = await asyncio.gather(*(post(visit_id, wrong_for(code, n))
                                             for n in range(1, visit_cap) for visit_id, code in world["clinic_spread"]))
            counted = collections.Counter(outcome(status, body) for status, body, _ in answers)
            assert counted == {"200 wrong": 10, "429 clinic_code_cap": len(answers) - 10}, counted
            newcomer_id, newcomer_code = world["newcomer"]
            for server in servers:
                status, body, _ = await post(newcomer_id, newcomer_code, server.base)
                assert (status, body["code"]) == (429, "clinic_code_cap")
    finally:
        codes_at_exit = [s.stop() for s in servers]
    assert codes_at_exit == [0, 0], [s.stderr()[-2000:] for s in servers]

    locked_doctor, spread_doctor, *_ = world["doctors"]
    failures = "SELECT COALESCE(SUM(failures), 0) FROM doctor_code_failures WHERE doctor_id = :d"
    assert await _count(shared_pg, failures, d=locked_doctor) == visit_cap
    assert await _count(shared_pg, failures, d=spread_doctor) == doctor_cap
    assert await _count(shared_pg, "SELECT COALESCE(SUM(failures), 0) FROM clinic_code_failures") == clinic_cap
    assert await _count(shared_pg, "SELECT code_attempts FROM visits WHERE id = :v", v=world["locked"][0]) == 32
    assert await _count(shared_pg, "SELECT COUNT(*) FROM visits WHERE state = 'verified'") == 1
