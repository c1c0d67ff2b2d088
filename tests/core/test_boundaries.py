"""The seams between core and its callers: the patient-answer rule, the doctor-scoping rule, and storage errors
in core's own words (so the server and the bot need not know SQLAlchemy)."""
import datetime as dt

import pytest
from sqlalchemy.exc import IntegrityError

from core.db.engine import create_engine
from core.db.uow import UnitOfWorkFactory
from core.errors import ConcurrentWrite, DatabaseUnavailable, NotFound
from core.model import Doctor, PatientAnswer, VisitMode, VisitState, patient_answer
from core.services import codes, registry, visits
from core.services.access import CLINIC_SYSTEM, Caller, DoctorKeyForbidden
from core.services.updates import claim_update

CLAIM = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(("state", "claimed", "answer"), [
    (VisitState.PATIENT_CONFIRMED, None, PatientAnswer.CONFIRMED),
    (VisitState.PATIENT_DISPUTED, None, PatientAnswer.DISPUTED),
    (VisitState.PATIENT_DISPUTED, CLAIM, PatientAnswer.DISPUTED),  # "I wasn't there" after a claim: the dispute
    (VisitState.UNVERIFIED, CLAIM, PatientAnswer.CLAIMED_ATTENDED),
    (VisitState.UNVERIFIED, None, PatientAnswer.NONE),
    (VisitState.VERIFIED, None, PatientAnswer.NONE),
    (VisitState.SCHEDULED, None, PatientAnswer.NONE),
    (VisitState.CANCELLED, None, PatientAnswer.NONE),
])
def test_the_patient_answer_of_every_state(state, claimed, answer):
    assert patient_answer(state, claimed) is answer


async def _visit(ctx, world, doctor_id):
    return await visits.register_visit(ctx, clinic_id=world.clinic.id, doctor_id=doctor_id, patient_id=world.p1.id,
                                       start=ctx.clock.now() + dt.timedelta(minutes=5),
                                       duration=dt.timedelta(minutes=20), mode=VisitMode.ONLINE, service_code="A01")


async def test_a_caller_bound_to_a_doctor_meets_only_that_doctors_visits(ctx, clinic_world):
    w = clinic_world
    other = await registry.add_doctor(ctx, w.clinic.id, "Other Doctor", "+7 701 999 88 77")
    own, foreign = await _visit(ctx, w, w.doctor.id), await _visit(ctx, w, other.id)
    bound = Caller("key:0123456789ab", w.doctor.id)
    day = dict(start_from=ctx.clock.now(), start_to=ctx.clock.now() + dt.timedelta(days=1))
    assert [v.id for v in await visits.list_visits(ctx, w.clinic.id, caller=bound, **day)] == [own.id]
    assert await visits.list_visits(ctx, w.clinic.id, doctor_id=other.id, caller=bound, **day) == []
    assert {v.id for v in await visits.list_visits(ctx, w.clinic.id, caller=CLINIC_SYSTEM, **day)} == {own.id,
                                                                                                      foreign.id}
    assert (await visits.get_visit(ctx, w.clinic.id, own.id, caller=bound)).visit.id == own.id
    for refused in (visits.get_visit(ctx, w.clinic.id, foreign.id, caller=bound),
                    visits.cancel_visit(ctx, w.clinic.id, foreign.id, caller=bound),
                    codes.request_code(ctx, w.clinic.id, foreign.id, caller=Caller.of_doctor_chat(w.doctor.id)),
                    codes.verify_code(ctx, w.clinic.id, foreign.id, "123456", caller=bound),
                    _register_for(ctx, w, other.id, bound)):
        with pytest.raises(NotFound):
            await refused
    with pytest.raises(DoctorKeyForbidden):
        await registry.revoke_face(ctx, w.clinic.id, w.p1.id, caller=bound)


def _register_for(ctx, world, doctor_id, caller):
    return visits.register_visit(ctx, clinic_id=world.clinic.id, doctor_id=doctor_id, patient_id=world.p1.id,
                                 start=ctx.clock.now(), duration=dt.timedelta(minutes=20), mode=VisitMode.ONLINE,
                                 service_code="A01", caller=caller)


async def test_a_refused_unique_key_is_a_concurrent_write_with_the_drivers_error_as_its_cause(ctx, clinic_world):
    """Two doctors of one clinic with one phone: what two racing registrations would meet."""
    doctor = clinic_world.doctor
    with pytest.raises(ConcurrentWrite) as refused:
        async with ctx.uow() as uow:
            await uow.doctors.add(Doctor(id=None, clinic_id=doctor.clinic_id, full_name="Twin", phone=doctor.phone),
                                  ctx.clock.now())
            await uow.commit()
    assert refused.value.code == "concurrent_write" and isinstance(refused.value.__cause__, IntegrityError)


async def test_a_repeated_update_is_claimed_once(ctx):
    assert await claim_update(ctx, 42, 1001) is True
    assert await claim_update(ctx, 42, 1001) is False
    assert await claim_update(ctx, 43, 1001) is True  # another bot's update with the same id


async def test_an_unreachable_database_is_database_unavailable():
    factory = UnitOfWorkFactory(create_engine("postgresql+asyncpg://postgres@127.0.0.1:1/test"))
    try:
        with pytest.raises(DatabaseUnavailable):
            await factory.ping()
        with pytest.raises(DatabaseUnavailable):
            async with factory(read_only=True):
                pass
    finally:
        await factory.engine.dispose()
