"""The web dashboard's data (issue 13): the disputes queue and its reviews, a doctor's scorecard, the clinics side by
side. The adversary is the clinic: its admin must not review, read or bury another clinic's disputes, nor undo a
review. Both databases, through the services the pages call."""
from __future__ import annotations

import csv
import datetime as dt
import io
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from core.db import tables as t
from core.errors import InvalidValue, NotFound
from core.model import VisitMode, VisitState
from core.services import auditors, dashboard, registry
from core.services.access import NotAnAuditor
from core.services.dashboard import DisputeKind, ReviewOutcome, Viewer
from core.services.flags import FlagKind
from core.services.visits import patient_disputes, register_visit
from tests.conftest import VALID_IINS
from tests.core.test_flags import DAY, build_world
from tests.worlds import built_once


async def _clinic(ctx, name: str, doctor_phone: str, admin_phone: str, iins: list[str]):
    clinic = await registry.create_clinic(ctx, name)
    doctor = await registry.add_doctor(ctx, clinic.id, f"Doctor of {name}", doctor_phone)
    admin = await registry.add_admin(ctx, clinic.id, f"Admin of {name}", admin_phone)
    patients = [(await registry.upsert_patient(ctx, clinic.id, iin, f"Patient {n}", f"+7705000{n}{n}{n}{n}",
                                               "ru")).patient for n, iin in enumerate(iins)]
    return SimpleNamespace(clinic=clinic, doctor=doctor, admin=admin, patients=patients)


async def _disputed_visit(ctx, clinic, clock, patient, *, reason: str | None = "I was at work that day") -> int:
    visit = await register_visit(ctx, clinic_id=clinic.clinic.id, doctor_id=clinic.doctor.id, patient_id=patient.id,
                                 start=clock.now() + dt.timedelta(hours=1), duration=dt.timedelta(minutes=20),
                                 mode=VisitMode.IN_PERSON, service_code="A01")
    clock.advance(dt.timedelta(minutes=5))
    await patient_disputes(ctx, visit.id, [patient.id], reason)
    return visit.id


async def _disputed_change(ctx, clinic, clock, patient) -> int:
    async with ctx.uow() as uow:
        change = await uow.patient_changes.add(patient_id=patient.id, clinic_id=clinic.clinic.id, kind="face_enrolled",
                                               at=clock.now(), actor="key:clinic")
        clock.advance(dt.timedelta(minutes=5))
        await uow.patient_changes.mark_disputed(change, clock.now())
        await uow.commit()
    return change


async def _two_clinics(ctx):
    clock = ctx.clock
    a = await _clinic(ctx, "Emhana No. 5", "+77011112233", "+77025554433", VALID_IINS[:2])
    b = await _clinic(ctx, "Phantom Polyclinic", "+77011112299", "+77025554499", VALID_IINS[2:4])
    a.first = await _disputed_visit(ctx, a, clock, a.patients[0])
    b.first = await _disputed_visit(ctx, b, clock, b.patients[0])
    a.change = await _disputed_change(ctx, a, clock, a.patients[1])
    a.second = await _disputed_visit(ctx, a, clock, a.patients[1], reason=None)
    return a, b


@pytest.fixture
async def two_clinics(ctx):
    """Built once per process (tests/worlds.py)."""
    return await built_once(ctx, _two_clinics)


async def _reviews_and_audit_rows(ctx, clinic_id: int) -> tuple[int, list]:
    async with ctx.uow(read_only=True) as uow:
        reviews = (await uow.conn.execute(select(func.count()).select_from(t.dispute_reviews))).scalar_one()
        rows = [r for r in await uow.audit.records(f"clinic:{clinic_id}") if r.action == "dispute.review"]
    return reviews, rows


async def test_the_queue_holds_every_dispute_of_the_viewers_clinics_oldest_first(ctx, two_clinics):
    a, b = two_clinics
    queue = await dashboard.disputes_queue(ctx, Viewer.admin(a.admin.id, a.clinic.id))
    assert [(d.kind, d.id) for d in queue] == [(DisputeKind.VISIT, a.first), (DisputeKind.CHANGE, a.change),
                                               (DisputeKind.VISIT, a.second)]
    first = queue[0]
    assert (first.reason, first.by, first.reviews) == ("I was at work that day", "Doctor of Emhana No. 5", ())
    assert first.patient.endswith(VALID_IINS[0][-4:]) and VALID_IINS[0] not in repr(queue)  # masked IIN only

    watching_a = await auditors.add_auditor(ctx, "Saule", "+77019998877", clinic_ids=[a.clinic.id])
    only_a = await dashboard.disputes_queue(ctx, Viewer.auditor(watching_a.id, [a.clinic.id]))
    assert [d.key for d in only_a] == [d.key for d in queue]
    fund = await auditors.add_auditor(ctx, "Fund", "+77019998800", all_clinics=True)
    everything = await dashboard.disputes_queue(ctx, Viewer.auditor(fund.id, None))
    assert [(d.clinic_id, d.id) for d in everything][:2] == [(a.clinic.id, a.first), (b.clinic.id, b.first)]
    assert len(everything) == 4


async def test_an_admin_reads_no_other_clinics_queue(ctx, two_clinics):
    a, b = two_clinics
    with pytest.raises(NotFound):
        await dashboard.disputes_queue(ctx, Viewer.admin(a.admin.id, a.clinic.id), b.clinic.id)
    watching_a = await auditors.add_auditor(ctx, "Saule", "+77019998877", clinic_ids=[a.clinic.id])
    with pytest.raises(NotFound):
        await dashboard.disputes_queue(ctx, Viewer.auditor(watching_a.id, [a.clinic.id]), b.clinic.id)


async def test_a_review_is_added_beside_the_dispute_and_audit_logged(ctx, clock, two_clinics):
    a, _ = two_clinics
    admin = Viewer.admin(a.admin.id, a.clinic.id)
    review = await dashboard.review_dispute(ctx, admin, "visit", a.first, "needs_follow_up", " Calling the patient ")
    clock.advance(dt.timedelta(hours=2))
    saule = await auditors.add_auditor(ctx, "Saule", "+77019998877", clinic_ids=[a.clinic.id])
    auditor = Viewer.auditor(saule.id, [a.clinic.id])
    await dashboard.review_dispute(ctx, auditor, DisputeKind.VISIT, a.first, ReviewOutcome.UPHELD,
                                   "Doctor was on leave")
    await dashboard.review_dispute(ctx, auditor, DisputeKind.CHANGE, a.change, ReviewOutcome.REJECTED)

    queue = {d.key: d for d in await dashboard.disputes_queue(ctx, auditor)}
    first = queue[f"visit-{a.first}"]
    assert [(r.reviewer, r.outcome, r.note) for r in first.reviews] == [
        (f"admin:{a.admin.id}", ReviewOutcome.NEEDS_FOLLOW_UP, "Calling the patient"),
        (f"auditor:{saule.id}", ReviewOutcome.UPHELD, "Doctor was on leave")]
    assert first.latest("auditor").outcome is ReviewOutcome.UPHELD and review.id == first.reviews[0].id
    assert first.latest("admin").outcome is ReviewOutcome.NEEDS_FOLLOW_UP
    assert queue[f"change-{a.change}"].latest("auditor").outcome is ReviewOutcome.REJECTED
    assert queue[f"change-{a.change}"].latest("admin") is None
    async with ctx.uow(read_only=True) as uow:  # the dispute itself is untouched
        visit = await uow.visits.get(a.first)
        change = await uow.patient_changes.get(a.change)
    assert (visit.state, visit.dispute_reason) == (VisitState.PATIENT_DISPUTED, "I was at work that day")
    assert change.disputed_at is not None
    _, rows = await _reviews_and_audit_rows(ctx, a.clinic.id)
    assert [(r.actor, r.subject, r.details["outcome"], r.details["note"]) for r in rows] == [
        (f"web:admin:{a.admin.id}", f"visit:{a.first}", "needs_follow_up", "Calling the patient"),
        (f"web:auditor:{saule.id}", f"visit:{a.first}", "upheld", "Doctor was on leave"),
        (f"web:auditor:{saule.id}", f"patient_change:{a.change}", "rejected", "")]


async def test_a_dishonest_admin_cannot_review_another_clinics_dispute(ctx, two_clinics):
    a, b = two_clinics
    honest = Viewer.admin(a.admin.id, a.clinic.id)
    forged = Viewer.admin(a.admin.id, b.clinic.id)  # a session claiming the other clinic
    for viewer in (honest, forged):
        for kind, dispute in (("visit", b.first), ("change", a.change if viewer is forged else 10_000)):
            with pytest.raises(NotFound):
                await dashboard.review_dispute(ctx, viewer, kind, dispute, "rejected", "not our problem")
    assert await _reviews_and_audit_rows(ctx, b.clinic.id) == (0, [])
    assert await _reviews_and_audit_rows(ctx, a.clinic.id) == (0, [])


async def test_nothing_to_review_on_a_visit_nobody_disputed_nor_for_a_removed_reviewer(ctx, clock, two_clinics):
    a, _ = two_clinics
    quiet = await register_visit(ctx, clinic_id=a.clinic.id, doctor_id=a.doctor.id, patient_id=a.patients[0].id,
                                 start=clock.now() + dt.timedelta(hours=3), duration=dt.timedelta(minutes=20),
                                 mode=VisitMode.IN_PERSON, service_code="A01")
    with pytest.raises(NotFound):  # a "rejected" stamped on an undisputed visit would read as a cleared dispute
        await dashboard.review_dispute(ctx, Viewer.admin(a.admin.id, a.clinic.id), "visit", quiet.id, "rejected")
    saule = await auditors.add_auditor(ctx, "Saule", "+77019998877", clinic_ids=[a.clinic.id])
    await auditors.remove_auditor(ctx, saule.id)
    with pytest.raises(NotFound):
        await dashboard.review_dispute(ctx, Viewer.auditor(saule.id, [a.clinic.id]), "visit", a.first, "upheld")
    other = await auditors.add_auditor(ctx, "Other", "+77019998866", clinic_ids=[a.clinic.id])
    elsewhere = await registry.create_clinic(ctx, "Elsewhere")
    stale = Viewer.auditor(other.id, [elsewhere.id])  # a session from before the scope changed
    with pytest.raises(NotFound):
        await dashboard.review_dispute(ctx, stale, "visit", a.first, "upheld")
    assert await _reviews_and_audit_rows(ctx, a.clinic.id) == (0, [])


@pytest.mark.parametrize(("outcome", "note", "says"), [
    ("cleared", "", "outcome"), ("upheld", "x" * 2001, "2001 characters"), ("upheld", "a\x1bb", "control")])
async def test_a_bad_review_is_refused_saying_why_and_writes_nothing(ctx, two_clinics, outcome, note, says):
    a, _ = two_clinics
    with pytest.raises(InvalidValue, match=says):
        await dashboard.review_dispute(ctx, Viewer.admin(a.admin.id, a.clinic.id), "visit", a.first, outcome, note)
    assert await _reviews_and_audit_rows(ctx, a.clinic.id) == (0, [])


async def test_the_queue_csv_escapes_what_patients_wrote(ctx, clock, two_clinics):
    a, _ = two_clinics
    await _disputed_visit(ctx, a, clock, a.patients[0], reason='=HYPERLINK("http://x","pay")')
    await dashboard.review_dispute(ctx, Viewer.admin(a.admin.id, a.clinic.id), "visit", a.first, "upheld", "ok")
    rows = list(csv.DictReader(io.StringIO(dashboard.disputes_csv(
        await dashboard.disputes_queue(ctx, Viewer.admin(a.admin.id, a.clinic.id))))))
    assert [r["reason"] for r in rows][-1] == "'=HYPERLINK(\"http://x\",\"pay\")"
    assert (rows[0]["id"], rows[0]["reviews"], rows[0]["clinic_outcome"]) == (str(a.first), "1", "upheld")
    assert rows[0]["auditor_outcome"] == ""
    assert rows[0]["disputed_at"].startswith("2026-11-25 09:")  # Asia/Almaty, not UTC


# --- scorecards and the clinics side by side, on the red flags' world (tests/core/test_flags.py) ---------------------

async def _flags_world_with_admins(ctx):
    w = await build_world(ctx)
    admins = {}
    for label, c in (("honest", w.honest), ("phantom", w.phantom), ("third", w.third)):
        admins[label] = Viewer.admin((await registry.add_admin(ctx, c.id, f"Admin {label}",
                                                               f"+770255500{len(admins)}0")).id, c.id)
    return w, admins


@pytest.fixture
async def world(ctx):
    """Built once per process (tests/worlds.py): ~1 s of CPU a build."""
    return await built_once(ctx, _flags_world_with_admins)


async def test_a_scorecard_names_the_doctors_flags_with_their_visits_and_30_days_of_evidence(ctx, world):
    w, admins = world
    b = w.phantom
    card = await dashboard.doctor_scorecard(ctx, admins["phantom"], b.doctors["ghost"], DAY)
    assert (card.first_day, card.last_day, len(card.days)) == (DAY - dt.timedelta(days=29), DAY, 30)
    kinds = {f.flag.kind: f for f in card.flags}
    assert set(kinds) == {FlagKind.UNVERIFIED_SHARE, FlagKind.DISPUTED_SHARE, FlagKind.REGISTERED_LATE}
    assert [v.id for v in kinds[FlagKind.DISPUTED_SHARE].visits] == b.visits["ghost disputed"]
    assert {v.answer.value for v in kinds[FlagKind.DISPUTED_SHARE].visits} == {"disputed"}
    assert [v.registered_late for v in kinds[FlagKind.REGISTERED_LATE].visits] == [True]
    day = card.days[-1]
    # 13 code + 2 disputed by code + 3 unverified + 1 late unverified + 1 face against a disputed enrolment
    assert (day.day, day.visits, day.code, day.face, day.unverified, day.disputed) == (DAY, 20, 15, 1, 4, 2)
    assert (day.confirmed, day.no_answer) == (14, 4)  # 13 + the face confirmed; the 4 unverified never answered
    assert all(d.visits == 0 for d in card.days[:-1])
    assert card.totals().code == 15


async def test_no_scorecard_of_another_clinics_doctor(ctx, world):
    w, admins = world
    with pytest.raises(NotFound):
        await dashboard.doctor_scorecard(ctx, admins["honest"], w.phantom.doctors["ghost"], DAY)
    saule = await auditors.add_auditor(ctx, "Saule", "+77019998877", clinic_ids=[w.honest.id])
    with pytest.raises(NotFound):
        await dashboard.doctor_scorecard(ctx, Viewer.auditor(saule.id, [w.honest.id]), w.phantom.doctors["ghost"],
                                         DAY)
    card = await dashboard.doctor_scorecard(ctx, Viewer.auditor(saule.id, [w.honest.id]), w.honest.doctors["aidos"],
                                            DAY)
    assert card.flags == () and card.days[-1].face == 19


async def test_a_clinics_doctors_with_their_flags(ctx, world):
    w, admins = world
    overview = await dashboard.clinic_doctors(ctx, admins["phantom"], w.phantom.id, DAY)
    by_name = {r.name: r for r in overview.rows}
    assert list(by_name) == ["Ghost", "Screen", "Silent", "Volume"]
    assert by_name["Volume"].kinds == (FlagKind.DAY_VOLUME, FlagKind.CLOSE_VISITS)
    assert (by_name["Volume"].visits, by_name["Volume"].flagged_visits) == (100, 100)
    assert by_name["Silent"].kinds == (FlagKind.NO_ANSWER_SHARE,)
    with pytest.raises(NotFound):
        await dashboard.clinic_doctors(ctx, admins["honest"], w.phantom.id, DAY)


async def test_an_auditor_sees_their_clinics_ranked_by_flags(ctx, world):
    w, admins = world
    fund = await auditors.add_auditor(ctx, "Fund", "+77019998800", all_clinics=True)
    ranking = await dashboard.clinics_ranking(ctx, Viewer.auditor(fund.id, None), DAY)
    assert [(r.rank, r.id) for r in ranking.rows] == [(1, w.phantom.id), (2, w.third.id), (3, w.honest.id)]
    assert ranking.rows[-1].flags == 0 and ranking.rows[0].flags > ranking.rows[1].flags > 0
    assert ranking.rows[0].visits == 160 and ranking.rows[-1].visits == 41
    two = await auditors.add_auditor(ctx, "Two", "+77019998811", clinic_ids=[w.honest.id, w.third.id])
    mine = await dashboard.clinics_ranking(ctx, Viewer.auditor(two.id, [w.honest.id, w.third.id]), DAY)
    assert [r.id for r in mine.rows] == [w.third.id, w.honest.id]
    assert {f.clinic_id for f in mine.flags} == {w.third.id}
    rows = list(csv.DictReader(io.StringIO(dashboard.totals_csv(mine))))
    assert [(r["rank"], r["name"]) for r in rows] == [("1", "Third Clinic"), ("2", "Emhana No. 5")]
    with pytest.raises(NotAnAuditor):
        await dashboard.clinics_ranking(ctx, admins["honest"], DAY)


async def test_the_queue_pages_through_every_dispute_once_in_order_and_can_hide_the_reviewed(ctx, clock, two_clinics):
    a, _ = two_clinics
    admin = Viewer.admin(a.admin.id, a.clinic.id)
    # a visit and a change disputed at the same moment: the change sorts first, and paging must not skip either
    clock.advance(dt.timedelta(minutes=1))
    tied_visit = await register_visit(ctx, clinic_id=a.clinic.id, doctor_id=a.doctor.id,
                                      patient_id=a.patients[0].id, start=clock.now() + dt.timedelta(hours=1),
                                      duration=dt.timedelta(minutes=20), mode=VisitMode.IN_PERSON,
                                      service_code="A01")
    async with ctx.uow() as uow:
        tied_change = await uow.patient_changes.add(patient_id=a.patients[0].id, clinic_id=a.clinic.id,
                                                    kind="phone_changed", at=clock.now(), actor="key:clinic")
        await uow.patient_changes.mark_disputed(tied_change, clock.now())
        await uow.commit()
    await patient_disputes(ctx, tied_visit.id, [a.patients[0].id])
    whole = [d.key for d in await dashboard.disputes_queue(ctx, admin)]
    assert whole == [f"visit-{a.first}", f"change-{a.change}", f"visit-{a.second}", f"change-{tied_change}",
                     f"visit-{tied_visit.id}"]
    for size in (1, 2, 3):
        seen, after = [], None
        while page := await dashboard.disputes_queue(ctx, admin, after=after, limit=size):
            seen += [d.key for d in page]
            after = page[-1].cursor
        assert seen == whole, size
    await dashboard.review_dispute(ctx, admin, "visit", a.first, "rejected")
    await dashboard.review_dispute(ctx, admin, "change", tied_change, "upheld")
    open_ones = await dashboard.disputes_queue(ctx, admin, unreviewed_only=True)
    assert [d.key for d in open_ones] == [f"change-{a.change}", f"visit-{a.second}", f"visit-{tied_visit.id}"]
    assert await dashboard.queue_counts(ctx, admin) == dashboard.QueueCounts(disputes=5, unreviewed=3)
    for cursor in ("garbage", "1.visit", "99999999999999999999999.visit.1", "1.other.1", "1.visit.99999999999",
                   "1.visit.-3"):
        with pytest.raises(InvalidValue, match="cursor"):
            await dashboard.disputes_queue(ctx, admin, after=cursor)
