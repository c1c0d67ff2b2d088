"""Migration 0007 on a database with visits in it, and what a capture session leaves in the database."""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from core.db import tables as t
from core.db.engine import create_engine
from core.db.migrate import upgrade_to_head
from core.services import capture, registry, visits
from tests import raw_rows
from tests.server.support import _encoding


async def test_widening_verified_by_keeps_every_visit_event_and_code(db_url):
    """SQLite cannot alter a column: a table rebuild of visits with foreign keys on would delete (ON DELETE CASCADE)
    every event, code and outbox row. 0007 changes only the declared length, and face_live then fits."""
    engine = create_engine(db_url)
    now = dt.datetime(2026, 11, 25, 4, 0, tzinfo=dt.UTC).replace(tzinfo=None)  # as a driver takes it
    tables = ("visits", "visit_events", "visit_codes", "outbox")
    try:
        await upgrade_to_head(engine, "0006")
        async with engine.begin() as conn:
            await raw_rows.insert(conn, [
                *raw_rows.CLINIC_DOCTOR_PATIENT,
                "INSERT INTO visits (id, clinic_id, doctor_id, patient_id, start_at, duration_s, mode, "
                "service_code, state, verified_by, created_at) "
                "VALUES (1, 1, 1, 1, :t, 1200, 'in_person', 'A01', 'verified', 'face', :t)",
                "INSERT INTO visit_events (visit_id, at, step, to_state, actor, method) "
                "VALUES (1, :t, 'verify', 'verified', 'clinic_system', 'face')",
                "INSERT INTO visit_codes (visit_id, generation, code_hash, issued_at, expires_at) "
                "VALUES (1, 1, 'h', :t, :t)",
                "INSERT INTO outbox (created_at, due_at, kind, recipient_kind, recipient_id, visit_id) "
                "VALUES (:t, :t, 'attendance_prompt', 'patient', 1, 1)"], now)
        await upgrade_to_head(engine)
        async with engine.begin() as conn:
            counts = [(await conn.execute(sa.text(f"SELECT count(*) FROM {name}"))).scalar_one()  # nosec B608
                      for name in tables]
            await conn.execute(sa.text("UPDATE visits SET verified_by = 'face_live' WHERE id = 1"))
            await conn.execute(sa.text("UPDATE visit_events SET method = 'face_live' WHERE visit_id = 1"))
            if conn.dialect.name == "sqlite":
                assert (await conn.execute(sa.text("PRAGMA integrity_check"))).scalar_one() == "ok"
            lengths = await conn.run_sync(lambda c: {
                (table, col["name"]): col["type"].length for table in ("visits", "visit_events")
                for col in sa.inspect(c).get_columns(table) if col["name"] in ("verified_by", "method")})
    finally:
        await engine.dispose()
    assert counts == [1, 1, 1, 1]
    assert lengths == {("visits", "verified_by"): 12, ("visit_events", "method"): 12}


async def test_only_a_hash_of_the_token_is_stored(ctx):
    clinic = await registry.create_clinic(ctx, "Clinic")
    doctor = await registry.add_doctor(ctx, clinic.id, "Doctor", "+77011110000")
    patient = (await registry.upsert_patient(ctx, clinic.id, "900101300017", "P", "+77051110000", "kk")).patient
    await registry.record_consent(ctx, clinic.id, patient.id, "Nurse")
    await registry.enrol_face(ctx, clinic.id, patient.id, [_encoding("p")])
    visit = await visits.register_visit(ctx, clinic_id=clinic.id, doctor_id=doctor.id, patient_id=patient.id,
                                        start=ctx.clock.now() + dt.timedelta(minutes=5),
                                        duration=dt.timedelta(minutes=20), mode="in_person", service_code="A01")
    opened = await capture.open_session(ctx, clinic.id, visit.id)
    async with ctx.uow() as uow:
        rows = (await uow.conn.execute(sa.select(t.capture_sessions))).all()
    assert len(rows) == 1 and opened.token not in str(tuple(rows[0]))
    assert rows[0].state == "open" and rows[0].expires_at == ctx.clock.now() + capture.OPEN_WITHIN
