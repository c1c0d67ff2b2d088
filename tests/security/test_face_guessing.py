"""Face guessing: every face attempt is reserved atomically before the image is read, so a burst of frames for one
visit counts exactly the visit's cap (5) and nothing verifies past it; hourly caps on failed face checks per
patient (RASTAU_PATIENT_FACE_FAILURES_PER_HOUR), per doctor (RASTAU_DOCTOR_FACE_FAILURES_PER_HOUR) and per clinic
(RASTAU_CLINIC_FACE_FAILURES_PER_HOUR) hold across new visits, under concurrent requests, and across two
`python -m server` processes (real face workers, real photos) sharing one PostgreSQL schema.
"""
from __future__ import annotations

import asyncio
import collections
import datetime as dt
import itertools
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import text

from core.config import Settings
from core.services import Context, api_keys, registry, visits
from server.app import create_app
from tests.conftest import pg_schema
from tests.polling import until
from tests.security.support import Seeded, ServerProcess, new_secrets, pinned_clock_offset
from tests.security.test_code_guessing import _count
from tests.server.conftest import add_visit
from tests.server.support import FakeAnalyser, _encoding, fake_frame

API = "/api/v1"
FACES = Path(__file__).parents[1] / "fixtures" / "faces"
VISIT_CAP = 5


class GatedAnalyser(FakeAnalyser):
    """Holds every impostor frame inside the "analysis" until the test opens the gate, so a burst is truly
    concurrent: all its frames are past the door before any outcome is written."""

    def __init__(self):
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.held = 0

    async def analyse(self, data: bytes):
        if b"impostor" in data and not self.gate.is_set():
            self.held += 1
            await self.gate.wait()
        return await super().analyse(data)


@pytest.fixture
def faces():
    return GatedAnalyser()


async def enrol(ctx, tenant, patient: int = 0, who: str = "asel") -> None:
    await registry.record_consent(ctx, tenant.clinic_id, tenant.patient_ids[patient], "Nurse")
    await registry.enrol_face(ctx, tenant.clinic_id, tenant.patient_ids[patient], [_encoding(who)])


async def post_frame(client, tenant, visit_id: int, frame: bytes) -> tuple[int, dict, dict]:
    response = await client.post(f"{API}/visits/{visit_id}/face", data=frame,
                                 headers={**tenant.h("webcam"), "Content-Type": "image/jpeg"})
    return response.status, await response.json(), dict(response.headers)


def outcome(status: int, body: dict) -> str:
    return f"{status} {body.get('decision') if status == 200 else body.get('code')}"


def tally(answers) -> collections.Counter:
    return collections.Counter(outcome(status, body) for status, body, *_ in answers)


async def hourly(ctx, scope: str, subject_id: int) -> int:
    async with ctx.uow(read_only=True) as uow:
        return (await uow.conn.execute(text(
            "SELECT COALESCE(SUM(failures), 0) FROM face_failures_hourly WHERE scope = :s AND subject_id = :i"),
            {"s": scope, "i": subject_id})).scalar_one()


async def capped_client(aiohttp_client, settings, ctx, conformance, **caps):
    capped = Settings(_env_file=None, **{**settings.model_dump(), **caps})
    application = create_app(capped, ctx=Context.build(capped, ctx.uow, ctx.clock), face_pool=FakeAnalyser())
    application.middlewares.insert(0, conformance.middleware())
    return await aiohttp_client(application)


async def burst(client, tenant, frames: list[tuple[int, bytes]]):
    return await asyncio.gather(*(post_frame(client, tenant, visit_id, frame) for visit_id, frame in frames))


# --- one server process (the app in the test's event loop), SQLite and PostgreSQL ---------------------------

async def test_a_burst_for_one_visit_counts_exactly_the_cap_and_a_match_past_it_does_not_verify(client, ctx,
                                                                                              tenants, faces):
    a, _ = tenants
    await enrol(ctx, a)
    visit = await add_visit(ctx, a)
    faces.gate.clear()
    flying = [asyncio.create_task(post_frame(client, a, visit.id, fake_frame("face", "impostor")))
              for _ in range(12)]
    await until(lambda: faces.held + sum(task.done() for task in flying) == 12, within=20.0,
                failing="the burst never settled")
    assert faces.held == VISIT_CAP  # only the reserved frames reached the face workers

    # the patient's own face, while the five reserved frames are still being analysed: past the cap, refused
    status, body, headers = await post_frame(client, a, visit.id, fake_frame("face", "asel"))
    assert (status, body["code"]) == (429, "face_attempts_locked"), body
    assert int(headers["Retry-After"]) >= 30
    faces.gate.set()
    assert tally(await asyncio.gather(*flying)) == {"200 no_match": VISIT_CAP, "429 face_attempts_locked": 7}
    assert faces.frames_seen == VISIT_CAP
    assert (await visits.get_visit(ctx, a.clinic_id, visit.id)).visit.state.value == "scheduled"
    assert await hourly(ctx, "patient", a.patient_ids[0]) == VISIT_CAP


async def test_a_match_is_not_a_failure(client, ctx, tenants):
    a, _ = tenants
    await enrol(ctx, a)
    visit = await add_visit(ctx, a)
    answers = [await post_frame(client, a, visit.id, fake_frame("face", who)) for who in ("bob", "bob", "asel")]
    assert tally(answers) == {"200 no_match": 2, "200 match": 1}
    assert [await hourly(ctx, scope, subject) for scope, subject in (
        ("patient", a.patient_ids[0]), ("doctor", a.doctor_id), ("clinic", a.clinic_id))] == [2, 2, 2]


async def test_a_new_visit_for_the_same_patient_is_still_refused_by_the_patients_hourly_cap(
        aiohttp_client, settings, ctx, clock, tenants, conformance):
    a, _ = tenants
    client = await capped_client(aiohttp_client, settings, ctx, conformance, patient_face_failures_per_hour=8)
    await enrol(ctx, a)
    await enrol(ctx, a, patient=1, who="ivan")
    first = await add_visit(ctx, a)
    assert tally([await post_frame(client, a, first.id, fake_frame("face", "bob")) for _ in range(5)]) == {
        "200 no_match": 5}
    second = await add_visit(ctx, a)  # a clean slate for the visit, not for the patient
    answers = await burst(client, a, [(second.id, fake_frame("face", "bob"))] * 4)
    assert tally(answers) == {"200 no_match": 3, "429 patient_face_cap": 1}
    assert await hourly(ctx, "patient", a.patient_ids[0]) == 8

    third = await add_visit(ctx, a)
    status, body, headers = await post_frame(client, a, third.id, fake_frame("face", "asel"))
    assert (status, body["code"]) == (429, "patient_face_cap"), body
    assert 0 < int(headers["Retry-After"]) <= 3601 and "this hour" in body["detail"]
    other = await add_visit(ctx, a, patient=1)  # another patient of the same doctor is not stopped
    assert outcome(*(await post_frame(client, a, other.id, fake_frame("face", "ivan")))[:2]) == "200 match"
    next_hour = await add_visit(ctx, a, start_in=dt.timedelta(hours=1))
    clock.advance(dt.timedelta(hours=1))  # the next clock hour opens the patient again
    assert outcome(*(await post_frame(client, a, next_hour.id, fake_frame("face", "asel")))[:2]) == "200 match"


async def test_failures_spread_over_patients_stop_at_the_doctors_hourly_cap(aiohttp_client, settings, ctx, tenants,
                                                                            conformance):
    a, _ = tenants
    client = await capped_client(aiohttp_client, settings, ctx, conformance, doctor_face_failures_per_hour=6)
    await enrol(ctx, a)
    await enrol(ctx, a, patient=1, who="ivan")
    spread = [await add_visit(ctx, a, patient=p) for p in (0, 1)]
    answers = await burst(client, a, [(v.id, fake_frame("face", "bob")) for v in spread for _ in range(4)])
    assert tally(answers) == {"200 no_match": 6, "429 doctor_face_cap": 2}
    assert await hourly(ctx, "doctor", a.doctor_id) == 6

    fresh = await add_visit(ctx, a)
    status, body, headers = await post_frame(client, a, fresh.id, fake_frame("face", "asel"))
    assert (status, body["code"]) == (429, "doctor_face_cap") and 0 < int(headers["Retry-After"]) <= 3601
    elsewhere = await add_visit(ctx, a, doctor_id=a.other_doctor_id)
    assert outcome(*(await post_frame(client, a, elsewhere.id, fake_frame("face", "asel")))[:2]) == "200 match"


async def test_failures_spread_over_doctors_stop_at_the_clinics_hourly_cap(aiohttp_client, settings, ctx, clock,
                                                                           tenants, conformance):
    a, b = tenants
    client = await capped_client(aiohttp_client, settings, ctx, conformance, clinic_face_failures_per_hour=5)
    await enrol(ctx, a)
    await enrol(ctx, a, patient=1, who="ivan")
    await enrol(ctx, b)
    spread = [await add_visit(ctx, a, patient=0), await add_visit(ctx, a, patient=1, doctor_id=a.other_doctor_id)]
    answers = await burst(client, a, [(v.id, fake_frame("face", "bob")) for v in spread for _ in range(4)])
    assert tally(answers) == {"200 no_match": 5, "429 clinic_face_cap": 3}
    assert await hourly(ctx, "clinic", a.clinic_id) == 5

    newcomer = await registry.add_doctor(ctx, a.clinic_id, "Newcomer", "+77019990001")
    visit = await add_visit(ctx, a, doctor_id=newcomer.id)
    status, body, headers = await post_frame(client, a, visit.id, fake_frame("face", "asel"))
    assert (status, body["code"]) == (429, "clinic_face_cap") and 0 < int(headers["Retry-After"]) <= 3601
    other_clinic = await add_visit(ctx, b)
    assert outcome(*(await post_frame(client, b, other_clinic.id, fake_frame("face", "asel")))[:2]) == "200 match"
    next_hour = await add_visit(ctx, a, doctor_id=newcomer.id, start_in=dt.timedelta(hours=1))
    clock.advance(dt.timedelta(hours=1))  # the next clock hour opens the clinic again
    assert outcome(*(await post_frame(client, a, next_hour.id, fake_frame("face", "asel")))[:2]) == "200 match"


# --- two `python -m server` processes on one PostgreSQL schema, real face workers and photos -----------------

@pytest.fixture
def shared_pg():
    with pg_schema() as url:
        yield url


CAPS = {"patient": 8, "doctor": 10, "clinic": 12}


async def _seed(seeded: Seeded) -> dict:
    ctx = await seeded.open()
    try:
        start = ctx.clock.now() + dt.timedelta(minutes=5)
        clinic = await registry.create_clinic(ctx, "Two-process clinic")
        control = await registry.create_clinic(ctx, "Control clinic")
        d1, d2 = [await registry.add_doctor(ctx, clinic.id, f"Doctor {i}", f"+770100000{i:02d}") for i in (1, 2)]
        dc = await registry.add_doctor(ctx, control.id, "Control doctor", "+77010000099")
        patients = {}
        for name, where, iin, phone in (("p1", clinic, "900101300017", "+77050000001"),
                                        ("p2", clinic, "850315400015", "+77050000002"),
                                        ("p3", clinic, "021231500015", "+77050000003"),
                                        ("pc", control, "880725400129", "+77050000004")):
            patient = (await registry.upsert_patient(ctx, where.id, iin, name, phone)).patient
            await registry.record_consent(ctx, where.id, patient.id, "Nurse")
            patients[name] = patient

        async def visit(patient, doctor) -> int:
            return (await visits.register_visit(ctx, clinic_id=doctor.clinic_id, doctor_id=doctor.id,
                                                patient_id=patient.id, start=start,
                                                duration=dt.timedelta(minutes=30), mode="in_person",
                                                service_code="A01")).id

        return {"keys": {c.id: (await api_keys.create_api_key(ctx, c.id, ["clinic_system", "webcam"], label="mis")).key
                         for c in (clinic, control)},
                "clinic": clinic.id, "control": control.id,
                "patients": {name: (p.id, p.clinic_id) for name, p in patients.items()},
                "doctors": {"d1": d1.id, "d2": d2.id},
                "v1": await visit(patients["p1"], d1), "v2": await visit(patients["p1"], d1),
                "v3": await visit(patients["p2"], d1), "v4": await visit(patients["p2"], d2),
                "patient_capped": await visit(patients["p1"], d2), "doctor_capped": await visit(patients["p3"], d1),
                "clinic_capped": await visit(patients["p3"], d2), "control_visit": await visit(patients["pc"], dc)}
    finally:
        await seeded.close()


@pytest.mark.slow  # two server processes with face workers
async def test_face_caps_hold_across_two_server_processes_sharing_postgresql(shared_pg, tmp_path):
    offset = pinned_clock_offset()  # the caps count per clock hour: seeding and both servers share one hour
    seeded = Seeded(shared_pg, new_secrets(), clock_offset_seconds=offset)
    world = await _seed(seeded)
    env = {f"RASTAU_{scope.upper()}_FACE_FAILURES_PER_HOUR": str(cap) for scope, cap in CAPS.items()}
    servers = [ServerProcess(shared_pg, seeded.keys, tmp_path / f"s{i}", env_extra=env, clock_offset_seconds=offset)
               .start() for i in range(2)]
    impostor, patient = (FACES / "biden/biden1.jpg").read_bytes(), (FACES / "obama/obama2.jpg").read_bytes()
    try:
        await asyncio.gather(*(s.wait_ready() for s in servers))  # face workers warm on both
        bases = itertools.cycle([s.base for s in servers])
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            async def post(visit_id: int, frame: bytes, base: str | None = None, clinic: int | None = None):
                headers = {"Authorization": f"Bearer {world['keys'][clinic or world['clinic']]}",
                           "Content-Type": "image/jpeg"}
                base = base or next(bases)
                async with session.post(f"{base}{API}/visits/{visit_id}/face", data=frame, headers=headers) as r:
                    return r.status, await r.json(), base

            for patient_id, clinic_id in world["patients"].values():  # real photos, enrolled over HTTP
                form = aiohttp.FormData()
                form.add_field("image", (FACES / "obama/obama1.jpg").read_bytes(), filename="1.jpg",
                               content_type="image/jpeg")
                async with session.put(f"{next(bases)}{API}/patients/{patient_id}/face", data=form, headers={
                        "Authorization": f"Bearer {world['keys'][clinic_id]}"}) as r:
                    assert r.status == 200, await r.text()

            # 1. twelve concurrent frames for one visit, alternating between the servers: exactly the visit's cap
            answers = await asyncio.gather(*(post(world["v1"], impostor) for _ in range(12)))
            assert tally(answers) == {"200 no_match": VISIT_CAP, "429 face_attempts_locked": 7}, tally(answers)
            assert {base for *_, base in answers} == {s.base for s in servers}
            for server in servers:  # the patient's own face after the lock, on either server
                status, body, _ = await post(world["v1"], patient, server.base)
                assert (status, body["code"]) == (429, "face_attempts_locked")

            # 2-4. a new visit of the same patient, then other patients and doctors: each hourly cap, exactly
            for visit, frames, expected in (("v2", 5, {"200 no_match": 3, "429 patient_face_cap": 2}),
                                            ("v3", 4, {"200 no_match": 2, "429 doctor_face_cap": 2}),
                                            ("v4", 4, {"200 no_match": 2, "429 clinic_face_cap": 2})):
                answers = await asyncio.gather(*(post(world[visit], impostor) for _ in range(frames)))
                assert tally(answers) == expected, (visit, tally(answers))
            for visit, code in (("patient_capped", "patient_face_cap"), ("doctor_capped", "doctor_face_cap"),
                                ("clinic_capped", "clinic_face_cap")):
                for server in servers:  # the right face, refused before any image work, on both servers
                    status, body, _ = await post(world[visit], patient, server.base)
                    assert (status, body["code"]) == (429, code), (visit, body)
            status, body, _ = await post(world["control_visit"], patient, clinic=world["control"])
            assert (status, body) == (200, {"decision": "match"})
    finally:
        codes_at_exit = [s.stop() for s in servers]
    assert codes_at_exit == [0, 0], [s.stderr()[-2000:] for s in servers]

    sums = "SELECT COALESCE(SUM(failures), 0) FROM face_failures_hourly WHERE scope = :s AND subject_id = :i"
    (p1, _), (p2, _) = world["patients"]["p1"], world["patients"]["p2"]
    assert [await _count(shared_pg, sums, s="patient", i=p) for p in (p1, p2)] == [8, 4]
    assert [await _count(shared_pg, sums, s="doctor", i=world["doctors"][d]) for d in ("d1", "d2")] == [10, 2]
    assert await _count(shared_pg, sums, s="clinic", i=world["clinic"]) == 12
    assert await _count(shared_pg, "SELECT face_failures FROM visits WHERE id = :v", v=world["v1"]) == VISIT_CAP
    assert await _count(shared_pg, "SELECT COUNT(*) FROM visits WHERE state = 'verified'") == 1
