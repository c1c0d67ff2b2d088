"""Retention (issue 16): the purge removes what its periods say and nothing else, on SQLite and PostgreSQL; it is
idempotent; a dry run counts the same and changes nothing; the audit chain verifies after it; /metrics counts it."""
import datetime as dt
import random

import sqlalchemy as sa

from core.cli import main as rastau
from core.db import tables as t
from core.model import OutboxKind, OutboxMessage, Recipient, VisitMode
from core.services import registry
from core.services.chat import link_chat_by_phone
from core.services.retention import purge, purge_totals
from core.services.visits import register_visit
from tests.commands import run_command_async

CHAT_1, CHAT_2 = 7001, 7002


def _encoding(seed):
    rng = random.Random(seed)
    return tuple(rng.uniform(-0.3, 0.3) for _ in range(128))


async def _dump(engine):
    """Every row the purge may touch, as the database holds it."""
    out = {}
    async with engine.connect() as conn:
        for table in (t.outbox, t.idempotency_keys, t.capture_sessions, t.face_templates, t.patient_changes,
                      t.visits, t.visit_events, t.audit_log, t.patients):
            out[table.name] = [tuple(r) for r in await conn.execute(sa.select(table).order_by(*table.primary_key))]
    return out


async def _world(ctx, w):
    """Old things (made at T0) and fresh things (made two years and a day later), of each kind the purge knows."""
    for p, seed in ((w.p1, 1), (w.p2, 2)):
        await registry.record_consent(ctx, w.clinic.id, p.id, "nurse Dana")
        await registry.enrol_face(ctx, w.clinic.id, p.id, [_encoding(seed)])
    await link_chat_by_phone(ctx, CHAT_1, w.p1.phone, "kk")
    await link_chat_by_phone(ctx, CHAT_2, w.p2.phone, "ru")
    old_visit = await register_visit(ctx, clinic_id=w.clinic.id, doctor_id=w.doctor.id, patient_id=w.p2.id,
                                     start=ctx.clock.now() + dt.timedelta(hours=1),
                                     duration=dt.timedelta(minutes=20), mode=VisitMode.IN_PERSON, service_code="c")
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        await uow.outbox.add(OutboxMessage(kind=OutboxKind.CHANGE_NOTICE, recipient_kind=Recipient.PATIENT,
                                           recipient_id=w.p1.id, due_at=now, payload={"chat_id": CHAT_1,
                                                                                      "change_id": 1},
                                           dedupe_key="old-sent"), now)
        await uow.idempotency.add(clinic_id=w.clinic.id, key="old", request_hash="h", status=201, body="{}", now=now)
        await uow.capture_sessions.add(token_hash="a" * 64, visit_id=old_visit.id, clinic_id=w.clinic.id,
                                       challenge="straight,left,straight", created_by="key:x", now=now,
                                       expires_at=now + dt.timedelta(minutes=10), state="open")
        await uow.conn.execute(sa.update(t.outbox).values(status="sent", sent_at=now, chat_message_id=99))
        await uow.commit()
    ctx.clock.advance(dt.timedelta(days=731))
    fresh = ctx.clock.now()
    # p2 comes back: a visit now keeps their face; p1 has had none for two years
    await register_visit(ctx, clinic_id=w.clinic.id, doctor_id=w.doctor.id, patient_id=w.p2.id,
                         start=fresh + dt.timedelta(hours=1), duration=dt.timedelta(minutes=20),
                         mode=VisitMode.IN_PERSON, service_code="c")
    async with ctx.uow() as uow:
        await uow.idempotency.add(clinic_id=w.clinic.id, key="fresh", request_hash="h", status=201, body="{}",
                                  now=fresh)
        await uow.capture_sessions.add(token_hash="b" * 64, visit_id=old_visit.id, clinic_id=w.clinic.id,
                                       challenge="straight,left,straight", created_by="key:x", now=fresh,
                                       expires_at=fresh + dt.timedelta(minutes=10), state="open")
        await uow.commit()


async def test_the_purge_removes_what_its_periods_say_and_nothing_else(ctx, clinic_world, engine):
    w = clinic_world
    await _world(ctx, w)
    before = await _dump(engine)
    dry = await purge(ctx, dry_run=True)
    assert await _dump(engine) == before, "a dry run changed something"
    done = await purge(ctx)
    assert done.counts == dry.counts
    old_outbox = sum(1 for r in before["outbox"] if r[2] < ctx.clock.now() - dt.timedelta(days=30))
    assert done.counts == {"outbox_payload": old_outbox, "idempotency": 1, "capture_sessions": 1, "face_idle": 1,
                           "orphan_keys": 0, "resealed": 0}
    after = await _dump(engine)
    async with engine.connect() as conn:
        outbox = (await conn.execute(sa.select(t.outbox).order_by(t.outbox.c.id))).all()
        keys = [r.key for r in await conn.execute(sa.select(t.idempotency_keys))]
        sessions = [r.token_hash[0] for r in await conn.execute(sa.select(t.capture_sessions))]
        faces = {r.patient_id: bytes(r.sealed) for r in await conn.execute(sa.select(t.face_templates))}
    old = [r for r in outbox if r.created_at < ctx.clock.now() - dt.timedelta(days=30)]
    assert old and all(r.payload == "{}" and r.chat_message_id is None for r in old)
    assert all(r.status in ("sent", "skipped", "failed", "blocked", "pending") for r in old)
    fresh = [r for r in outbox if r.created_at >= ctx.clock.now() - dt.timedelta(days=30)]
    untouched = {r[0]: r for r in before["outbox"]}
    assert fresh and all(tuple(r) == untouched[r.id] for r in fresh if r.id in untouched)
    assert keys == ["fresh"] and sessions == ["b"]
    assert faces[w.p1.id] == b"" and faces[w.p2.id] != b""
    assert await registry.face_references(ctx, w.p1.id) == []
    assert await registry.face_references(ctx, w.p2.id) == [_encoding(2)]
    for table in ("visits", "visit_events", "patients"):
        assert after[table] == before[table], f"the purge touched {table}"
    assert set(before["audit_log"]) <= set(after["audit_log"])  # only added to
    # the patient hears that the face was deleted, and why: a face_revoked change made by retention
    async with ctx.uow(read_only=True) as uow:
        changes = [r for r in await uow.record.changes([w.p1.id]) if r.actor == "retention"]
    assert [c.kind for c in changes] == ["face_revoked"]

    again = await purge(ctx)
    assert again.total == 0, again.counts
    totals = await purge_totals(ctx)
    assert totals["idempotency"] == (1, 1) and totals["face_idle"] == (1, 1)
    assert "orphan_keys" not in totals


async def test_audit_verify_holds_after_a_purge_and_the_cli_dry_run_reports_counts(ctx, clinic_world, db_url,
                                                                                 engine):
    await _world(ctx, clinic_world)
    offset = (ctx.clock.now() - dt.datetime.now(dt.UTC)).total_seconds()  # the CLI's clock where the test's is
    env = {"RASTAU_DATABASE_URL": db_url, "RASTAU_MODE": "dev", "RASTAU_CLOCK_OFFSET_SECONDS": str(offset),
           "RASTAU_TEMPLATE_KEY": ctx.settings.template_key.get_secret_value(), "RASTAU_KEYSTORE_URL": ctx.keys.url}
    before = await _dump(engine)
    dry = await run_command_async(rastau, "rastau", env, "purge", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert ("would purge idempotency: 1\nwould purge capture_sessions: 1\nwould purge face_idle: 1\n" in dry.stdout
            and "(dry run: nothing changed)" in dry.stdout), dry.stdout
    assert await _dump(engine) == before
    await purge(ctx)
    verified = await run_command_async(rastau, "rastau", env, "audit-verify")
    assert verified.returncode == 0 and "BROKEN" not in verified.stdout, verified.stdout
    async with ctx.uow(read_only=True) as uow:
        logged = [r for r in await uow.audit.records("operator") if r.action == "retention.purge"]
    assert len(logged) == 1 and logged[0].details["idempotency"] == 1
    assert set(logged[0].details) == {"outbox_payload", "idempotency", "capture_sessions", "face_idle",
                                      "orphan_keys", "resealed"}  # counts, never contents
