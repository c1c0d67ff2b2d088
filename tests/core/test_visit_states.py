"""The visit state machine, as pure domain logic."""
import datetime as dt

import pytest

from core.errors import IllegalTransition
from core.model import Actor, VerificationMethod, Visit, VisitMode, VisitState

T = dt.datetime(2026, 11, 25, 4, 0, tzinfo=dt.UTC)


def visit(mode=VisitMode.IN_PERSON, state=VisitState.SCHEDULED):
    return Visit(id=7, clinic_id=1, doctor_id=1, patient_id=1, start=T, duration=dt.timedelta(minutes=20),
                 mode=mode, service_code="A01", state=state)


def test_online_visit_refuses_face_verification_in_the_domain():
    v = visit(VisitMode.ONLINE)
    with pytest.raises(IllegalTransition) as err:
        v.verify(VerificationMethod.FACE, Actor.CLINIC_SYSTEM, T)
    assert "visit 7" in str(err.value) and "scheduled" in str(err.value) and "code only" in str(err.value)
    assert v.state is VisitState.SCHEDULED
    v.verify(VerificationMethod.CODE, Actor.DOCTOR, T)
    assert (v.state, v.verified_by) == (VisitState.VERIFIED, VerificationMethod.CODE)


def test_verifying_twice_is_refused():
    v = visit()
    v.verify(VerificationMethod.FACE, Actor.CLINIC_SYSTEM, T)
    with pytest.raises(IllegalTransition, match="visit 7 is verified; cannot verify by code"):
        v.verify(VerificationMethod.CODE, Actor.DOCTOR, T)


def test_confirming_an_unverified_visit_is_refused_but_dispute_is_taken():
    v = visit()
    v.close_unverified(T + dt.timedelta(hours=1))
    with pytest.raises(IllegalTransition, match="visit 7 is unverified; cannot confirm attendance"):
        v.confirm_by_patient(T)
    assert v.dispute_by_patient(T + dt.timedelta(hours=2), "I was at work") is not None
    assert (v.state, v.dispute_reason) == (VisitState.PATIENT_DISPUTED, "I was at work")


def test_every_legal_path_records_events_with_actor_and_utc_time():
    v = visit()
    v.verify(VerificationMethod.FACE, Actor.CLINIC_SYSTEM, T)
    v.confirm_by_patient(T + dt.timedelta(hours=1))
    assert [(e.step, e.to_state, e.actor, e.method) for e in v.pending_events] == [
        ("verify", VisitState.VERIFIED, Actor.CLINIC_SYSTEM, "face"),
        ("patient_confirm", VisitState.PATIENT_CONFIRMED, Actor.PATIENT, None)]
    assert all(e.at.tzinfo == dt.UTC for e in v.pending_events)

    v2 = visit()
    v2.verify(VerificationMethod.CODE, Actor.DOCTOR, T)
    v2.dispute_by_patient(T)
    assert v2.state is VisitState.PATIENT_DISPUTED

    v3 = visit()
    v3.cancel(Actor.CLINIC_SYSTEM, T, "patient rescheduled")
    assert v3.state is VisitState.CANCELLED
    with pytest.raises(IllegalTransition):
        v3.dispute_by_patient(T)
    with pytest.raises(IllegalTransition):
        v3.verify(VerificationMethod.CODE, Actor.DOCTOR, T)


def test_second_press_changes_nothing_and_answers_become_final_after_48_hours():
    v = visit()
    v.verify(VerificationMethod.CODE, Actor.DOCTOR, T)
    assert v.confirm_by_patient(T + dt.timedelta(hours=1)) is not None
    assert v.confirm_by_patient(T + dt.timedelta(hours=2)) is None  # acknowledged, no change
    late = T + dt.timedelta(hours=1) + dt.timedelta(hours=48, seconds=1)
    with pytest.raises(IllegalTransition, match="final"):
        v.dispute_by_patient(late)
    assert v.state is VisitState.PATIENT_CONFIRMED


def test_a_confirmation_may_be_corrected_to_a_dispute_within_48_hours():
    v = visit()
    v.verify(VerificationMethod.CODE, Actor.DOCTOR, T)
    v.confirm_by_patient(T)
    v.dispute_by_patient(T + dt.timedelta(hours=47))
    assert v.state is VisitState.PATIENT_DISPUTED
    assert v.dispute_by_patient(T + dt.timedelta(hours=48)) is None
    with pytest.raises(IllegalTransition):
        v.confirm_by_patient(T + dt.timedelta(hours=48))


def test_naive_times_are_refused():
    with pytest.raises(Exception, match="time zone"):
        naive = dt.datetime(2026, 1, 1, 9)  # noqa: DTZ001 - the naive time under test
        Visit(id=None, clinic_id=1, doctor_id=1, patient_id=1, start=naive,
              duration=dt.timedelta(minutes=10), mode="in_person", service_code="A")
