"""Visit use cases on both engines: registration queues its messages in the same transaction,
windows close, patient answers, disputes reach admins, and the digest counts what happened."""
import csv
import datetime as dt
import io

import pytest
import sqlalchemy as sa

from core.codes import CodeOutcome
from core.db import tables as t
from core.errors import IllegalTransition, NotFound
from core.model import VisitMode, VisitState
from core.services import codes, digest, faces, visits
from core.services.faces import FaceLocked


async def _visit(ctx, w, *, patient=None, mode=VisitMode.IN_PERSON, start=None):
    return await visits.register_visit(ctx, clinic_id=w.clinic.id, doctor_id=w.doctor.id,
                                       patient_id=(patient or w.p1).id,
                                       start=start or ctx.clock.now() + dt.timedelta(hours=2),
                                       duration=dt.timedelta(minutes=20), mode=mode, service_code="A01")


async def test_registration_queues_code_and_prompt_with_the_right_due_times(ctx, clinic_world):
    v = await _visit(ctx, clinic_world)
    async with ctx.uow() as uow:
        queued = {m.kind: m for m in await uow.outbox.pending(visit_id=v.id)}
    assert queued["visit_code"].due_at == v.start - dt.timedelta(minutes=10)
    assert queued["attendance_prompt"].due_at == v.end + dt.timedelta(hours=1)
    online = await _visit(ctx, clinic_world, mode=VisitMode.ONLINE)
    async with ctx.uow() as uow:
        kinds = [m.kind for m in await uow.outbox.pending(visit_id=online.id)]
    assert kinds == ["attendance_prompt"], "online codes go out only when the doctor asks"


async def test_failed_registration_leaves_no_visit_and_no_message(ctx, clinic_world, engine):
    with pytest.raises(NotFound):
        await visits.register_visit(ctx, clinic_id=clinic_world.clinic.id, doctor_id=999,
                                    patient_id=clinic_world.p1.id, start=ctx.clock.now(),
                                    duration=dt.timedelta(minutes=10), mode="in_person", service_code="A")
    async with engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(t.visits))).scalar_one() == 0
        assert (await conn.execute(sa.select(sa.func.count()).select_from(t.outbox))).scalar_one() == 0


async def test_window_closes_to_unverified_and_patient_can_dispute(ctx, clinic_world):
    w = clinic_world
    v = await _visit(ctx, w)
    ctx.clock.set(v.end + dt.timedelta(minutes=14))
    assert await visits.close_expired_windows(ctx) == 0
    ctx.clock.set(v.end + dt.timedelta(minutes=16))
    assert await visits.close_expired_windows(ctx) == 1
    view = await visits.get_visit(ctx, w.clinic.id, v.id)
    assert view.visit.state is VisitState.UNVERIFIED
    assert [e.step for e in view.events] == ["register", "close_unverified"]
    assert (await visits.patient_confirms(ctx, v.id, [w.p1.id])).visit.state is VisitState.UNVERIFIED
    result = await visits.patient_disputes(ctx, v.id, [w.p1.id], "I was in Almaty that day")
    assert result.changed and result.visit.state is VisitState.PATIENT_DISPUTED
    async with ctx.uow() as uow:
        notices = await uow.outbox.pending(kind="dispute_notice")
    assert [(n.recipient_kind, n.recipient_id) for n in notices] == [("admin", w.admin.id)]
    again = await visits.patient_disputes(ctx, v.id, [w.p1.id])
    assert not again.changed
    async with ctx.uow() as uow:
        assert len(await uow.outbox.pending(kind="dispute_notice")) == 1, "a second press changes nothing"


async def test_patient_cannot_answer_for_someone_elses_visit(ctx, clinic_world):
    v = await _visit(ctx, clinic_world)
    with pytest.raises(NotFound):
        await visits.patient_disputes(ctx, v.id, [clinic_world.p2.id])
    assert (await visits.get_visit(ctx, clinic_world.clinic.id, v.id)).visit.state is VisitState.SCHEDULED


async def test_other_clinic_cannot_see_the_visit(ctx, clinic_world):
    from core.services import registry
    other = await registry.create_clinic(ctx, "Other")
    v = await _visit(ctx, clinic_world)
    with pytest.raises(NotFound):
        await visits.get_visit(ctx, other.id, v.id)
    with pytest.raises(NotFound):
        await visits.cancel_visit(ctx, other.id, v.id)


async def test_face_on_online_visit_refused_before_any_image_work(ctx, clinic_world):
    v = await _visit(ctx, clinic_world, mode=VisitMode.ONLINE)
    with pytest.raises(IllegalTransition, match="code only"):
        await faces.reserve_face_attempt(ctx, clinic_world.clinic.id, v.id)


async def test_five_face_failures_lock_with_growing_retry_after(ctx, clinic_world):
    from core.services import Context, registry
    w = clinic_world
    # ten failures in two rounds, then a match: room for them under the patient's hourly cap
    ctx = Context.build(ctx.settings.model_copy(update={"patient_face_failures_per_hour": 11}), ctx.uow, ctx.clock)
    await registry.record_consent(ctx, w.clinic.id, w.p1.id, "nurse")
    await registry.enrol_face(ctx, w.clinic.id, w.p1.id, [tuple([0.0] * 128)])
    v = await _visit(ctx, w, start=ctx.clock.now() + dt.timedelta(minutes=5))  # inside its window

    async def attempt(encoding):
        return await faces.record_face_attempt(ctx, await faces.reserve_face_attempt(ctx, w.clinic.id, v.id), "ok",
                                               encoding)

    far = tuple([0.5] * 128)
    for _round, expected in ((1, 30), (2, 60)):
        results = [await attempt(far) for _ in range(5)]
        assert [r.decision.value for r in results] == ["no_match"] * 5
        assert results[-1].retry_after == expected
        with pytest.raises(FaceLocked) as locked:
            await faces.reserve_face_attempt(ctx, w.clinic.id, v.id)
        assert locked.value.retry_after == expected
        ctx.clock.advance(dt.timedelta(seconds=expected + 1))
    near = tuple([0.01] * 128)
    assert (await attempt(near)).decision.value == "match"
    assert (await visits.get_visit(ctx, w.clinic.id, v.id)).visit.verified_by.value == "face"


async def test_digest_counts_and_csv_match_the_database(ctx, clinic_world):
    from core.clock import ALMATY
    w = clinic_world
    day_start = dt.datetime(2026, 11, 26, 9, 0, tzinfo=ALMATY)
    face_v = await _visit(ctx, w, start=day_start)
    code_v = await _visit(ctx, w, patient=w.p2, mode=VisitMode.ONLINE, start=day_start + dt.timedelta(hours=1))
    phantom = await _visit(ctx, w, start=day_start + dt.timedelta(hours=2))
    cancelled = await _visit(ctx, w, start=day_start + dt.timedelta(hours=3))
    next_day = await _visit(ctx, w, start=day_start + dt.timedelta(hours=16))  # 01:00 next local day
    await visits.cancel_visit(ctx, w.clinic.id, cancelled.id)
    ctx.clock.set(day_start)
    async with ctx.uow() as uow:
        v = await uow.visits.get(face_v.id, lock=True)
        from core.model import Actor, VerificationMethod
        v.verify(VerificationMethod.FACE, Actor.CLINIC_SYSTEM, ctx.clock.now())
        await uow.visits.save(v)
        await uow.commit()
    ctx.clock.set(code_v.start)
    issued = await codes.issue_code(ctx, code_v.id)
    assert (await codes.verify_code(ctx, w.clinic.id, code_v.id, issued.code)).outcome is CodeOutcome.VERIFIED
    ctx.clock.set(day_start + dt.timedelta(hours=6))
    await visits.close_expired_windows(ctx)
    await visits.patient_confirms(ctx, face_v.id, [w.p1.id])
    await visits.patient_disputes(ctx, phantom.id, [w.p1.id], "never went")

    d = await digest.build_digest(ctx, w.clinic.id, day_start.date())
    assert d.totals == {"visits": 3, "face_verified": 1, "face_live_verified": 0, "code_verified": 1, "unverified": 1,
                        "patient_confirmed": 1, "disputed": 1, "no_answer": 1, "cancelled": 1, "unreachable": 3,
                        "registered_late": 0, "fresh_reference": 0,
                        "no_channel": 1}  # the unanswered visit's patient has no channel at all: nobody could ask
    assert [r.visit_id for r in d.flagged] == [phantom.id]
    assert d.flagged[0].iin_masked == "********0017"
    assert [(c.doctor_name, c.total, c.verified, c.disputed) for c in d.per_doctor] == [("Aidos Seitkali", 3, 2, 1)]
    rows = list(csv.DictReader(io.StringIO(d.to_csv())))
    assert [int(r["visit_id"]) for r in rows] == [face_v.id, code_v.id, phantom.id, cancelled.id]
    assert next_day.id not in [int(r["visit_id"]) for r in rows]
    assert rows[0]["start_local"] == "2026-11-26 09:00" and rows[2]["patient_answer"] == "disputed"
    assert all("900101300017" not in line for line in d.to_csv().splitlines())
