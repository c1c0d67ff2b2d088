"""Red flags play the fraud they are for (issue 12): a demo-sized world of an honest clinic, a clinic that bills
phantom visits every way the public record found, and a third clinic sharing a doctor with it. Each rule raises
exactly its flags, naming the visits, and nothing at all on the honest clinic. Both databases."""
from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
from dataclasses import dataclass, field

import pytest

from core.clock import ALMATY
from core.iin import make_iin
from core.model import Visit, VisitMode, VisitState
from core.services import flag_lists, registry
from core.services.flags import DESCRIPTIONS, Flag, FlagKind, find_flags, flags_csv

DAY = dt.date(2026, 11, 24)  # yesterday for the fixture clock (2026-11-25 09:00 Almaty)


def local(hour: int, minute: int = 0, day: dt.date = DAY) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=ALMATY).astimezone(dt.UTC)


@dataclass
class Clinic:
    id: int
    doctors: dict[str, int] = field(default_factory=dict)
    patients: dict[str, int] = field(default_factory=dict)
    visits: dict[str, list[int]] = field(default_factory=dict)  # by the story's name for them


_serials = itertools.count(100)


async def patient(ctx, clinic: Clinic, name: str, phone: str, born: dt.date, male: bool) -> int:
    iin = make_iin(born, male, next(_serials))
    clinic.patients[name] = (await registry.upsert_patient(ctx, clinic.id, iin, name.title(), phone)).patient.id
    return clinic.patients[name]


async def visits(ctx, clinic: Clinic, label: str, doctor: str, patients: list[str], first: dt.datetime, *,
                 count: int, every_minutes: int, minutes: int = 20, service: str = "A01",
                 verified_by: str | None = "face", state: VisitState = VisitState.PATIENT_CONFIRMED,
                 mode: VisitMode = VisitMode.IN_PERSON, registered_late: bool = False,
                 enrolment: int | None = None) -> list[int]:
    """Store visits as the repositories store them: ``count`` of them ``every_minutes`` apart from ``first``."""
    ids = []
    async with ctx.uow() as uow:
        for n in range(count):
            start = first + dt.timedelta(minutes=every_minutes * n)
            visit = Visit(id=None, clinic_id=clinic.id, doctor_id=clinic.doctors[doctor],
                          patient_id=clinic.patients[patients[n % len(patients)]], start=start,
                          duration=dt.timedelta(minutes=minutes), mode=mode, service_code=service, state=state,
                          verified_by=verified_by, verified_at=start + dt.timedelta(minutes=2) if verified_by else None,
                          registered_late=registered_late, verified_enrolment_id=enrolment)
            await uow.visits.add(visit, start - dt.timedelta(days=1))
            await uow.visits.save(visit)
            ids.append(visit.id)
        await uow.commit()
    clinic.visits.setdefault(label, []).extend(ids)
    return ids


async def clinic(ctx, name: str, doctors: dict[str, str]) -> Clinic:
    made = Clinic((await registry.create_clinic(ctx, name)).id)
    for label, phone in doctors.items():
        made.doctors[label] = (await registry.add_doctor(ctx, made.id, label.title(), phone)).id
    return made


async def honest_clinic(ctx) -> Clinic:
    """Two doctors, 20 face-verified visits each at 20-minute steps, every patient answering "yes"; a family of three
    on one phone; a fitting cervical screening; a patient who dies the day after her visit; one code in twenty."""
    a = await clinic(ctx, "Emhana No. 5", {"aidos": "+77011112233", "bota": "+77011112234"})
    for n in range(7):
        await patient(ctx, a, f"patient {n}", f"+7705100000{n}", dt.date(1960 + n, 3, 1), n % 2 == 0)
    for n in range(3):
        await patient(ctx, a, f"family {n}", "+77051111111", dt.date(1980 + n * 10, 6, 1), n == 0)
    woman = await patient(ctx, a, "woman 41", "+77052222222", dt.date(1985, 3, 15), False)
    await patient(ctx, a, "woman 30 today", "+77052222223", DAY.replace(year=DAY.year - 30), False)
    everyone = list(a.patients)
    await visits(ctx, a, "aidos", "aidos", everyone, local(9), count=19, every_minutes=20)
    await visits(ctx, a, "aidos code", "aidos", everyone, local(16, 20), count=1, every_minutes=20,
                 verified_by="code")
    await visits(ctx, a, "bota", "bota", everyone[:-2], local(9), count=18, every_minutes=20)
    await visits(ctx, a, "screenings", "bota", ["woman 41", "woman 30 today"], local(15), count=2, every_minutes=20,
                 service="SCREEN-CERVICAL")
    await visits(ctx, a, "online", "bota", everyone, local(17), count=1, every_minutes=20, verified_by="code",
                 mode=VisitMode.ONLINE)
    assert woman
    return a


@dataclass
class World:
    honest: Clinic
    phantom: Clinic
    third: Clinic


async def build_world(ctx) -> World:
    honest = await honest_clinic(ctx)
    b = await clinic(ctx, "Phantom Polyclinic", {"volume": "+77013000001", "screen": "+77013000002",
                                                 "ghost": "+77013000003", "silent": "+77013000004"})
    for n in range(6):
        await patient(ctx, b, f"regular {n}", f"+7707300000{n}", dt.date(1950 + n * 8, 1, 10), n % 2 == 1)
    for n in range(8):
        await patient(ctx, b, f"one phone {n}", "+77079999999", dt.date(1940 + n * 9, 2, 2), n % 2 == 0)
    await patient(ctx, b, "man", "+77074444441", dt.date(1980, 5, 5), True)
    await patient(ctx, b, "woman 25", "+77074444442", dt.date(2001, 1, 1), False)
    dead = await patient(ctx, b, "dead", "+77074444443", dt.date(1950, 7, 7), True)
    regulars = [f"regular {n}" for n in range(6)]
    # every in-person visit here rests on a code: the clinic verifies everything by code
    await visits(ctx, b, "volume", "volume", regulars, local(8), count=100, every_minutes=4, verified_by="code")
    await visits(ctx, b, "screen", "screen", regulars, local(8), count=15, every_minutes=20, verified_by="code")
    await visits(ctx, b, "overlap", "screen", regulars, local(13, 20), count=1, every_minutes=20, verified_by="code")
    await visits(ctx, b, "misfit", "screen", ["man", "woman 25"], local(14), count=2, every_minutes=20,
                 verified_by="code", service="SCREEN-CERVICAL")
    await visits(ctx, b, "dead", "screen", ["dead"], local(15), count=1, every_minutes=20, verified_by="code")
    await visits(ctx, b, "one phone", "screen", ["one phone 3"], local(15, 40), count=1, every_minutes=20,
                 verified_by="code")
    await visits(ctx, b, "ghost ok", "ghost", regulars, local(9), count=13, every_minutes=20, verified_by="code")
    await visits(ctx, b, "ghost disputed", "ghost", regulars, local(14), count=2, every_minutes=20,
                 verified_by="code", state=VisitState.PATIENT_DISPUTED)
    await visits(ctx, b, "ghost unverified", "ghost", regulars, local(15), count=3, every_minutes=20, verified_by=None,
                 state=VisitState.UNVERIFIED)
    await visits(ctx, b, "ghost late", "ghost", regulars, local(16), count=1, every_minutes=20, verified_by=None,
                 state=VisitState.UNVERIFIED, registered_late=True)
    await visits(ctx, b, "silent", "silent", regulars, local(9), count=20, every_minutes=20, verified_by="code",
                 state=VisitState.VERIFIED)
    cap = ctx.settings.clinic_code_failures_per_hour
    async with ctx.uow() as uow:
        enrolled_at = local(7)
        for n in range(5):  # five faces replaced in one day
            await uow.patient_changes.add(patient_id=b.patients[f"regular {n}"], clinic_id=b.id,
                                          kind="face_replaced", at=enrolled_at, actor="key:phantom")
        disputed = await uow.patient_changes.add(patient_id=b.patients["regular 5"], clinic_id=b.id,
                                                 kind="face_enrolled", at=enrolled_at, actor="key:phantom")
        await uow.patient_changes.mark_disputed(disputed, local(12))
        for hour in (10, 11, 12):  # wrong codes up to the clinic's cap, three hours running
            for _ in range(cap):
                assert await uow.codes.take_clinic_failure(b.id, local(hour), cap)
        face_cap = ctx.settings.clinic_face_failures_per_hour
        for hour in (16, 17, 18):  # and failed faces up to its face cap
            for _ in range(face_cap):
                assert await uow.face_failures.take("clinic", b.id, local(hour), face_cap)
        await uow.commit()
    # one visit verified against the enrolment its patient disputed
    await visits(ctx, b, "disputed enrolment", "ghost", ["regular 5"], local(8, 40), count=1, every_minutes=20,
                 verified_by="face", enrolment=disputed)
    died = dt.date(2025, 6, 1)
    born_dead = await registry_iin(ctx, dead)
    honest_dies_after = await registry_iin(ctx, honest.patients["patient 0"])
    report = await flag_lists.import_deaths(ctx, f"{born_dead},{died:%Y-%m-%d}\n"
                                                 f"{honest_dies_after},{DAY + dt.timedelta(days=1):%d.%m.%Y}\n",
                                            "test registry extract")
    assert (report.added, report.rejected) == (2, [])

    # the screening doctor's number spelled another way: stored normalised, so the rule still sees one doctor
    c = await clinic(ctx, "Third Clinic", {"moonlighter": "8 (701) 300-00-02", "face 1": "+77015000001",
                                           "face 2": "+77015000002", "coder": "+77015000003",
                                           "aidos": "+77011112233"})  # the honest clinic's doctor, evenings
    for n in range(4):
        await patient(ctx, c, f"c patient {n}", f"+7708500000{n}", dt.date(1970 + n, 4, 4), n % 2 == 0)
    cs = list(c.patients)
    # the screening doctor of the phantom clinic (same phone) works here 13:00-14:00 in 10-minute visits, while
    # billing 13:20-13:40 there
    await visits(ctx, c, "moonlighter", "moonlighter", cs, local(13), count=6, every_minutes=10, minutes=10)
    await visits(ctx, c, "face 1", "face 1", cs, local(9), count=45, every_minutes=10, minutes=10)
    await visits(ctx, c, "face 2", "face 2", cs, local(9), count=45, every_minutes=10, minutes=10)
    await visits(ctx, c, "coder", "coder", cs, local(9), count=20, every_minutes=20, verified_by="code")
    # working in two clinics is no fraud: aidos's last visit at home ends 16:40, here he starts at 16:40
    await visits(ctx, c, "aidos evening", "aidos", cs, local(16, 40), count=2, every_minutes=20)
    return World(honest, b, c)


async def registry_iin(ctx, patient_id: int) -> str:
    async with ctx.uow(read_only=True) as uow:
        return (await uow.patients.get(patient_id)).iin


def summary(flags: list[Flag]) -> set[tuple[str, int, int | None, float]]:
    return {(f.kind.value, f.clinic_id, f.doctor_id, round(f.value, 3)) for f in flags}


async def test_each_rule_raises_exactly_its_flags_and_none_on_the_honest_clinic(ctx):
    w = await build_world(ctx)
    b, c = w.phantom, w.third
    flags = await find_flags(ctx, DAY, DAY)
    assert summary(flags) == {
        ("day_volume", b.id, b.doctors["volume"], 100),
        ("close_visits", b.id, b.doctors["volume"], 99),  # 4 minutes apart, the first has none before it
        ("two_clinics", b.id, b.doctors["screen"], 1),
        ("clinic_code_share", b.id, None, 0.994),  # 156 of 157: the one face match rests on a disputed enrolment
        ("unverified_share", b.id, b.doctors["ghost"], 0.2),
        ("disputed_share", b.id, b.doctors["ghost"], 0.1),
        ("no_answer_share", b.id, b.doctors["silent"], 1.0),
        ("registered_late", b.id, b.doctors["ghost"], 1),
        ("face_replacements", b.id, None, 5),
        ("enrolment_disputes", b.id, None, 1),
        ("shared_phone", b.id, None, 8),
        ("code_cap_hours", b.id, None, 3),
        ("face_cap_hours", b.id, None, 3),
        ("service_misfit", b.id, b.doctors["screen"], 2),
        ("after_death", b.id, b.doctors["screen"], 1),
        ("two_clinics", c.id, c.doctors["moonlighter"], 2),  # 13:20 and 13:30 overlap 13:20-13:40
        ("doctor_code_share", c.id, c.doctors["coder"], 1.0),
    }
    by_kind = {(f.kind, f.clinic_id): f for f in flags}
    assert by_kind[FlagKind.DAY_VOLUME, b.id].visit_ids == tuple(b.visits["volume"])
    assert by_kind[FlagKind.DAY_VOLUME, b.id].day == DAY and by_kind[FlagKind.DAY_VOLUME, b.id].threshold == 48
    assert by_kind[FlagKind.CLOSE_VISITS, b.id].visit_ids == tuple(b.visits["volume"][1:])
    assert by_kind[FlagKind.SERVICE_MISFIT, b.id].visit_ids == tuple(b.visits["misfit"])
    assert by_kind[FlagKind.AFTER_DEATH, b.id].visit_ids == tuple(b.visits["dead"])
    assert by_kind[FlagKind.SHARED_PHONE, b.id].visit_ids == tuple(b.visits["one phone"])
    assert by_kind[FlagKind.SHARED_PHONE, b.id].detail["phone"] == "********9999"
    assert by_kind[FlagKind.TWO_CLINICS, b.id].visit_ids == tuple(b.visits["overlap"])
    assert by_kind[FlagKind.TWO_CLINICS, b.id].detail["other_clinic_id"] == c.id
    assert by_kind[FlagKind.TWO_CLINICS, c.id].visit_ids == tuple(c.visits["moonlighter"][2:4])
    assert by_kind[FlagKind.UNVERIFIED_SHARE, b.id].visit_ids == tuple(b.visits["ghost unverified"]
                                                                       + b.visits["ghost late"])
    assert by_kind[FlagKind.DISPUTED_SHARE, b.id].visit_ids == tuple(b.visits["ghost disputed"])
    assert by_kind[FlagKind.REGISTERED_LATE, b.id].visit_ids == tuple(b.visits["ghost late"])
    assert by_kind[FlagKind.NO_ANSWER_SHARE, b.id].visit_ids == tuple(b.visits["silent"])
    assert by_kind[FlagKind.ENROLMENT_DISPUTES, b.id].visit_ids == tuple(b.visits["disputed enrolment"])
    assert by_kind[FlagKind.DOCTOR_CODE_SHARE, c.id].visit_ids == tuple(c.visits["coder"])
    assert by_kind[FlagKind.FACE_CAP_HOURS, b.id].visit_ids == ()  # the phantom clinic verifies by code 16:00-19:00
    assert len(by_kind[FlagKind.CLINIC_CODE_SHARE, b.id].visit_ids) == 100 + 15 + 1 + 2 + 1 + 1 + 13 + 2 + 20

    assert await find_flags(ctx, DAY, DAY, clinic_id=w.honest.id) == []
    assert summary(await find_flags(ctx, DAY, DAY, clinic_id=b.id, doctor_id=b.doctors["volume"])) == {
        ("day_volume", b.id, b.doctors["volume"], 100), ("close_visits", b.id, b.doctors["volume"], 99)}
    assert await find_flags(ctx, DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=2)) == []
    for flag in flags:  # every flag can be read out
        assert flag.explain() and flag.description
    rows = list(csv.DictReader(io.StringIO(flags_csv(flags))))
    assert len(rows) == len(flags)
    [dead] = [r for r in rows if r["kind"] == "after_death"]
    assert (dead["doctor_id"], dead["visits"], dead["visit_ids"]) == (str(b.doctors["screen"]), "1",
                                                                      str(b.visits["dead"][0]))
    assert "after their date of death" in dead["explanation"]


async def test_one_doctors_flags_are_the_clinics_flags_about_that_doctor(ctx):
    """A scorecard asks for one doctor (the rules then read that doctor's visits, and the code-share rule lists only
    that doctor's ids while it still measures every doctor for the clinic's median): it must show what the whole
    clinic's run says about that doctor, ids and thresholds included, for every doctor of every clinic."""
    w = await build_world(ctx)
    everything = await find_flags(ctx, DAY, DAY)
    assert {f.kind for f in everything} >= {FlagKind.DOCTOR_CODE_SHARE, FlagKind.TWO_CLINICS, FlagKind.DAY_VOLUME}
    for c in (w.honest, w.phantom, w.third):
        for doctor_id in c.doctors.values():
            alone = await find_flags(ctx, DAY, DAY, clinic_id=c.id, doctor_id=doctor_id)
            expected = [f for f in everything if f.clinic_id == c.id and f.doctor_id == doctor_id]
            assert [(f, f.detail) for f in alone] == [(f, f.detail) for f in expected], (c.id, doctor_id)
    coder = await find_flags(ctx, DAY, DAY, clinic_id=w.third.id, doctor_id=w.third.doctors["coder"])
    assert [(f.kind, f.visit_ids) for f in coder] == [(FlagKind.DOCTOR_CODE_SHARE, tuple(w.third.visits["coder"]))]
    another = next(d for name, d in w.third.doctors.items() if name != "coder")  # the coder raises the median
    assert await find_flags(ctx, DAY, DAY, clinic_id=w.third.id, doctor_id=another) == [
        f for f in everything if f.doctor_id == another]


async def test_a_visit_verified_by_code_in_an_hour_at_the_cap_is_listed(ctx):
    """The guess that hit: a visit verified by code while the clinic sat at its wrong-code cap."""
    b = await clinic(ctx, "Guessers", {"doc": "+77016000001"})
    await patient(ctx, b, "p", "+77076000001", dt.date(1970, 1, 1), True)
    cap = ctx.settings.clinic_code_failures_per_hour
    async with ctx.uow() as uow:
        for hour in (10, 11, 12):
            for _ in range(cap):
                await uow.codes.take_clinic_failure(b.id, local(hour), cap)
        await uow.commit()
    hit = await visits(ctx, b, "hit", "doc", ["p"], local(11, 30), count=1, every_minutes=20, verified_by="code")
    await visits(ctx, b, "outside", "doc", ["p"], local(14), count=1, every_minutes=20, verified_by="code")
    [flag] = [f for f in await find_flags(ctx, DAY, DAY) if f.kind is FlagKind.CODE_CAP_HOURS]
    assert flag.visit_ids == tuple(hit)  # verified at 11:32; the 14:02 one was in no capped hour


async def test_a_visit_verified_by_face_in_an_hour_at_the_face_cap_is_listed(ctx):
    """A stranger's face tried until one passed: the match made while the clinic sat at its face cap."""
    b = await clinic(ctx, "Face guessers", {"doc": "+77016000002"})
    await patient(ctx, b, "p", "+77076000002", dt.date(1970, 1, 1), True)
    cap = ctx.settings.clinic_face_failures_per_hour
    async with ctx.uow() as uow:
        for hour in (10, 11, 12):
            for _ in range(cap):
                await uow.face_failures.take("clinic", b.id, local(hour), cap)
            await uow.face_failures.take("doctor", b.doctors["doc"], local(hour + 3), cap)  # a doctor's: no matter
        await uow.commit()
    hit = await visits(ctx, b, "hit", "doc", ["p"], local(12, 10), count=1, every_minutes=20)
    await visits(ctx, b, "by code", "doc", ["p"], local(11, 10), count=1, every_minutes=20, verified_by="code")
    [flag] = [f for f in await find_flags(ctx, DAY, DAY) if f.kind is FlagKind.FACE_CAP_HOURS]
    assert (flag.value, flag.visit_ids) == (3, tuple(hit))
    assert "300 failed face checks an hour in 3 hours" in flag.explain()


@pytest.mark.parametrize("born, fits", [
    (DAY.replace(year=DAY.year - 30), True),  # thirty on the visit's day
    (DAY.replace(year=DAY.year - 30) + dt.timedelta(days=1), False),  # thirty tomorrow
    (DAY.replace(year=DAY.year - 70), True),
    (DAY.replace(year=DAY.year - 71) + dt.timedelta(days=1), True),  # 70 until tomorrow
    (DAY.replace(year=DAY.year - 71), False),
])
async def test_the_age_band_is_counted_on_the_visits_local_day_as_the_iin_gives_it(ctx, born, fits):
    from core.iin import parse_iin
    w = await clinic(ctx, "Ages", {"doc": "+77017000001"})
    pid = await patient(ctx, w, "w", "+77077000001", born, False)
    assert parse_iin(await registry_iin(ctx, pid)).birth_date == born
    await visits(ctx, w, "screening", "doc", ["w"], local(0, 10), count=1, every_minutes=20,
                 service="SCREEN-CERVICAL")  # 00:10 in Almaty: still the previous day in UTC
    misfits = [f for f in await find_flags(ctx, DAY, DAY) if f.kind is FlagKind.SERVICE_MISFIT]
    assert (misfits == []) is fits


async def test_an_operator_edited_rule_is_what_the_flags_follow(ctx, tmp_path):
    w = await clinic(ctx, "Rules", {"doc": "+77018000001"})
    await patient(ctx, w, "man", "+77078000001", dt.date(1960, 1, 1), True)
    await visits(ctx, w, "prostate", "doc", ["man"], local(10), count=1, every_minutes=20, service="B-PSA")
    assert await find_flags(ctx, DAY, DAY) == []
    done = await flag_lists.import_service_rules(ctx, "service_code,sex,min_age,max_age,source\n"
                                                      "B-PSA,male,70,,an order\n")
    assert (done.added, done.changed, done.rejected) == (1, 0, [])
    [flag] = await find_flags(ctx, DAY, DAY)
    assert (flag.kind, flag.detail["rule"]) == (FlagKind.SERVICE_MISFIT, "men from 70")
    await flag_lists.remove_service_rule(ctx, "B-PSA")
    assert await find_flags(ctx, DAY, DAY) == []


def test_every_kind_is_described():
    assert set(DESCRIPTIONS) == set(FlagKind)
    assert all(text and text[0].islower() for text in DESCRIPTIONS.values())
