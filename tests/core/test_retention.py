"""Retention (issue 16): the purge removes what its periods say and nothing else, on SQLite and PostgreSQL; it is
idempotent; a dry run counts the same and changes nothing; the audit chain verifies after it; /metrics counts it."""
import datetime as dt
import random

import pytest
import sqlalchemy as sa

from core.cli import main as rastau
from core.db import tables as t
from core.errors import InvalidIin
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
    assert done.counts == {"outbox_payload": old_outbox, "idempotency": 1, "capture_sessions": 1, "web_sessions": 0,
                           "face_idle": 1, "billing_reduced": 0, "orphan_keys": 0, "resealed": 0}
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
    lines = set(dry.stdout.splitlines())
    assert {"would purge idempotency: 1", "would purge capture_sessions: 1", "would purge face_idle: 1",
            "would purge billing_reduced: 0"} <= lines, dry.stdout
    assert "(dry run: nothing changed)" in dry.stdout
    assert await _dump(engine) == before
    await purge(ctx)
    verified = await run_command_async(rastau, "rastau", env, "audit-verify")
    assert verified.returncode == 0 and "BROKEN" not in verified.stdout, verified.stdout
    async with ctx.uow(read_only=True) as uow:
        logged = [r for r in await uow.audit.records("operator") if r.action == "retention.purge"]
    assert len(logged) == 1 and logged[0].details["idempotency"] == 1
    assert set(logged[0].details) == {"outbox_payload", "idempotency", "capture_sessions", "web_sessions",
                                      "face_idle", "billing_reduced", "orphan_keys", "resealed"}  # counts only


async def test_after_the_billing_period_a_patient_keeps_what_the_payer_must(ctx, clinic_world, engine):
    """Five years on, a patient with no visit since keeps the row, the name and birth date and sex; the phone, the
    chat and the full IIN go. A patient with a recent visit, and every visit and its evidence, stay whole."""
    w = clinic_world
    await _world(ctx, w)
    ctx.clock.advance(dt.timedelta(days=3 * 365 + 1))  # five years after T0 and a day; p2's visit was 3 years ago
    assert (await purge(ctx, dry_run=True)).counts["billing_reduced"] == 1  # p1 only
    await register_visit(ctx, clinic_id=w.clinic.id, doctor_id=w.doctor.id, patient_id=w.p2.id,
                         start=ctx.clock.now() + dt.timedelta(hours=1), duration=dt.timedelta(minutes=20),
                         mode=VisitMode.IN_PERSON, service_code="c")
    ctx.clock.advance(dt.timedelta(days=2 * 365))  # p1: nothing for seven years; p2: a visit two years ago
    before = await _dump(engine)
    done = await purge(ctx)
    assert done.counts["billing_reduced"] == 1
    async with ctx.uow(read_only=True) as uow:
        p1, p2 = await uow.patients.get(w.p1.id), await uow.patients.get(w.p2.id)
    assert p1.reduced and p1.iin.startswith(w.p1.iin[:7]) and w.p1.iin not in p1.iin and p1.phone == ""
    assert p1.chat_id is None and p1.full_name == w.p1.full_name and p1.birth_date == w.p1.birth_date
    assert p1.sex == w.p1.sex
    assert not p2.reduced and p2.phone == w.p2.phone and p2.chat_id == CHAT_2
    after = await _dump(engine)
    assert after["visits"] == before["visits"] and after["visit_events"] == before["visit_events"]
    assert (await purge(ctx)).counts["billing_reduced"] == 0  # idempotent
    with pytest.raises(InvalidIin):  # the reduced form is retention's alone: a clinic cannot register with it
        await registry.upsert_patient(ctx, w.clinic.id, p1.iin, "Someone", "+7 701 555 66 77")


async def test_dashboard_links_and_sessions_go_by_the_dashboards_rule(ctx, clinic_world, engine):
    """Links a day after they expired; sessions a month after, but each user's newest, which keeps their language."""
    now, w = ctx.clock.now(), clinic_world
    old, recent = now - dt.timedelta(days=40), now - dt.timedelta(hours=2)
    async with engine.begin() as conn:
        await conn.execute(sa.insert(t.web_links), [
            dict(token_hash="l1" * 32, chat_id=1, role="admin", subject_id=w.admin.id, created_at=old,
                 expires_at=old + dt.timedelta(minutes=15)),
            dict(token_hash="l2" * 32, chat_id=1, role="admin", subject_id=w.admin.id, created_at=recent,
                 expires_at=recent + dt.timedelta(minutes=15))])
        await conn.execute(sa.insert(t.web_sessions), [
            dict(token_hash=f"s{i}" * 32, chat_id=1, role="admin", subject_id=w.admin.id, language="kk",
                 created_at=old, expires_at=old + dt.timedelta(hours=i)) for i in (1, 2)])
    assert (await purge(ctx, dry_run=True)).counts["web_sessions"] == 2
    assert (await purge(ctx)).counts["web_sessions"] == 2
    async with engine.connect() as conn:
        links = [r.token_hash[:2] for r in await conn.execute(sa.select(t.web_links))]
        sessions = [r.token_hash[:2] for r in await conn.execute(sa.select(t.web_sessions))]
    assert links == ["l2"] and sessions == ["s2"]  # the newest session stays: it remembers the language
