"""The patient's record (issue 16): withdrawal shreds the face references for good (a backup taken before cannot
open them), a clinic can neither withdraw for the patient nor re-enrol without a new consent the patient hears of,
and /mydata shows the chat's own patients and nobody else."""

import asyncio
import datetime as dt
import json
import random
import re
import sqlite3

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from core.db import tables as t
from core.db.engine import create_engine
from core.db.uow import UnitOfWorkFactory
from core.errors import ConsentMissing, NotFound
from core.face_references import MASTER_KEY, PATIENT_KEY
from core.model import OutboxKind, VisitMode
from core.services import Context, registry
from core.services.channels import ChannelName, patient_routes
from core.services.chat import link_chat_by_phone
from core.services.face_keys import reseal_legacy
from core.services.faces import NoReference, reserve_face_attempt
from core.services.patient_record import my_record, record_csv, record_json, unlink_chat, withdraw_consent
from core.services.visits import register_visit
from tests.conftest import T0, VALID_IINS
from tests.conftest import test_settings as settings_for

CHAT = 5550001


def _encoding(seed):
    rng = random.Random(seed)
    return tuple(rng.uniform(-0.3, 0.3) for _ in range(128))


async def _enrolled(ctx, w, patient, seed=1):
    await registry.record_consent(ctx, w.clinic.id, patient.id, "nurse Dana")
    await registry.enrol_face(ctx, w.clinic.id, patient.id, [_encoding(seed), _encoding(seed + 100)])


def _backup(db_url, name):
    """What an operator's backup does: SQLite's online backup of the live file (its WAL included)."""
    src_path = make_url(db_url).database
    dst_path = src_path.replace("rastau.db", name)
    src, dst = sqlite3.connect(src_path), sqlite3.connect(dst_path)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return f"sqlite+aiosqlite:///{dst_path}"


def _on_copy(ctx, copy_url):
    """The real code path over the copy: same environment key, same (live) key store."""
    settings = settings_for(
        copy_url, template_key=ctx.settings.template_key.get_secret_value(), keystore_url=ctx.keys.url
    )
    return Context.build(settings, UnitOfWorkFactory(create_engine(copy_url)), ctx.clock)


async def _sealed(engine, patient_id):
    async with engine.connect() as conn:
        return [
            (bytes(r.sealed), r.key_version)
            for r in await conn.execute(
                sa.select(t.face_templates.c.sealed, t.face_templates.c.key_version).where(
                    t.face_templates.c.patient_id == patient_id
                )
            )
        ]


async def test_a_backup_taken_before_withdrawal_cannot_open_the_references(ctx, clinic_world, db_url, engine):
    if not db_url.startswith("sqlite"):
        pytest.skip("the file copy is SQLite's; PostgreSQL runs the same code path in the other tests")
    w = clinic_world
    await _enrolled(ctx, w, w.p1)
    await link_chat_by_phone(ctx, CHAT, w.p1.phone, "kk")
    copy_url = _backup(db_url, "backup-before.db")
    on_copy = _on_copy(ctx, copy_url)
    try:
        assert await registry.face_references(on_copy, w.p1.id) == [_encoding(1), _encoding(101)]  # it could
        result = await withdraw_consent(ctx, CHAT)
        assert (result.patients, result.references, result.keys) == (1, 2, 1)
        # the copy still holds both ciphertexts, under the patient's own key ...
        held = await _sealed(on_copy.uow.engine, w.p1.id)
        assert len(held) == 2 and all(blob and version == PATIENT_KEY for blob, version in held)
        # ... which exists nowhere any more: the real code path opens nothing from the copy
        assert await registry.face_references(on_copy, w.p1.id) == []
        assert await ctx.keys.key(w.p1.id) is None
        # and the live database kept no ciphertext at all
        assert all(blob == b"" for blob, _ in await _sealed(engine, w.p1.id))
    finally:
        await on_copy.uow.engine.dispose()


async def test_on_postgresql_a_dump_taken_before_withdrawal_cannot_open_the_references(ctx, clinic_world, db_url,
                                                                                         tmp_path):
    """The same on PostgreSQL, with the key store apart (RASTAU_KEYSTORE_URL, as production must set it): pg_dump
    of the schema before the withdrawal, restored into a schema of its own, opened through the real code path."""
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite's copy is the test above")
    import uuid

    from tests.conftest import _pg_dump_schema, _pg_execute

    apart = Context.build(ctx.settings.model_copy(update={"keystore_url": f"sqlite+aiosqlite:///{tmp_path}/k.db"}),
                          ctx.uow, ctx.clock)
    w = clinic_world
    await _enrolled(apart, w, w.p1)
    await link_chat_by_phone(apart, CHAT, w.p1.phone, "kk")
    schema = re.search(r"search_path=(\w+)", db_url).group(1)
    restored = f"t_{uuid.uuid4().hex[:12]}"
    dump = await asyncio.to_thread(_pg_dump_schema, schema)
    lines = [line for line in dump.splitlines() if not line.startswith("\\")]
    await _pg_execute(f'CREATE SCHEMA IF NOT EXISTS "{restored}"')
    try:
        await _pg_execute("\n".join(lines).replace(f"{schema}.", f"{restored}.").replace(
            f"CREATE SCHEMA {schema};", "").replace(f"'{schema}'", f"'{restored}'"))
        copy_url = re.sub(r"search_path=\w+", f"search_path={restored}", db_url)
        on_copy = _on_copy(apart, copy_url)
        try:
            assert len(await registry.face_references(on_copy, w.p1.id)) == 2  # the dump could, before
            await withdraw_consent(apart, CHAT)
            held = await _sealed(on_copy.uow.engine, w.p1.id)
            assert len(held) == 2 and all(blob for blob, _ in held)
            assert await registry.face_references(on_copy, w.p1.id) == []
        finally:
            await on_copy.uow.engine.dispose()
    finally:
        await _pg_execute(f'DROP SCHEMA "{restored}" CASCADE')


async def test_legacy_references_are_resealed_then_shredded(ctx, clinic_world, db_url, engine):
    w = clinic_world
    await _enrolled(ctx, w, w.p1)
    async with engine.begin() as conn:  # as stored before revision 0010: under the environment's key
        await conn.execute(sa.delete(t.face_templates))
        await conn.execute(
            sa.insert(t.face_templates).values(
                patient_id=w.p1.id, sealed=ctx.cipher.seal(w.p1.id, _encoding(7)), created_at=T0, key_version=MASTER_KEY
            )
        )
    await ctx.keys.destroy([w.p1.id])
    assert await registry.face_references(ctx, w.p1.id) == [_encoding(7)]
    assert await reseal_legacy(ctx) == 1
    assert await reseal_legacy(ctx) == 0  # idempotent
    assert [v for _, v in await _sealed(engine, w.p1.id)] == [PATIENT_KEY]
    assert await registry.face_references(ctx, w.p1.id) == [_encoding(7)]
    await link_chat_by_phone(ctx, CHAT, w.p1.phone, "ru")
    await withdraw_consent(ctx, CHAT)
    assert await registry.face_references(ctx, w.p1.id) == []


async def test_after_withdrawal_the_face_route_says_no_reference_and_re_enrolment_needs_a_consent_told(
    ctx, clinic_world
):
    w = clinic_world
    await _enrolled(ctx, w, w.p1)
    await link_chat_by_phone(ctx, CHAT, w.p1.phone, "kk")
    visit = await register_visit(
        ctx,
        clinic_id=w.clinic.id,
        doctor_id=w.doctor.id,
        patient_id=w.p1.id,
        start=T0 + dt.timedelta(minutes=5),
        duration=dt.timedelta(minutes=20),
        mode=VisitMode.IN_PERSON,
        service_code="consult",
    )
    await withdraw_consent(ctx, CHAT)
    ctx.clock.advance(dt.timedelta(minutes=6))
    with pytest.raises(NoReference) as refused:
        await reserve_face_attempt(ctx, w.clinic.id, visit.id)
    assert refused.value.code == "no_reference"
    # the clinic cannot put a face back without a new consent ...
    with pytest.raises(ConsentMissing):
        await registry.enrol_face(ctx, w.clinic.id, w.p1.id, [_encoding(3)])
    # ... and the new consent and the enrolment both reach the patient's chat
    await _enrolled(ctx, w, w.p1, seed=3)
    async with ctx.uow(read_only=True) as uow:
        notices = await uow.outbox.pending(kind=OutboxKind.CHANGE_NOTICE)
        kinds = [(await uow.patient_changes.get(json.loads(n.payload)["change_id"])).kind for n in notices]
    assert kinds[-2:] == ["consent_recorded", "face_replaced"]  # a face was enrolled before
    assert await registry.face_references(ctx, w.p1.id) == [_encoding(3), _encoding(103)]


async def test_withdrawal_tells_the_admins_and_keeps_past_evidence(ctx, clinic_world):
    w = clinic_world
    await _enrolled(ctx, w, w.p1)
    await link_chat_by_phone(ctx, CHAT, w.p1.phone, "kk")
    await withdraw_consent(ctx, CHAT)
    async with ctx.uow(read_only=True) as uow:
        told = await uow.outbox.pending(kind=OutboxKind.CONSENT_WITHDRAWN_NOTICE)
        records = await uow.audit.records(f"clinic:{w.clinic.id}")
    assert [(m.recipient_kind, m.recipient_id) for m in told] == [("admin", w.admin.id)]
    assert records[-1].action == "patient.withdraw_consent" and records[-1].actor == "patient"


async def test_a_chat_with_no_patient_withdraws_nothing(ctx, clinic_world):
    await _enrolled(ctx, clinic_world, clinic_world.p1)
    with pytest.raises(NotFound):
        await withdraw_consent(ctx, 4242)
    assert len(await registry.face_references(ctx, clinic_world.p1.id)) == 2


async def test_mydata_shows_the_family_and_nobody_else(ctx, clinic_world):
    w = clinic_world
    # the same family phone carries p1 and a child; p2 (same clinic) and a namesake at another clinic must not show
    child = (await registry.upsert_patient(ctx, w.clinic.id, VALID_IINS[2], "Dana N.", w.p1.phone, "kk")).patient
    other = await registry.create_clinic(ctx, "Other clinic")
    namesake = (await registry.upsert_patient(ctx, other.id, VALID_IINS[3], "Asel N.", "+7 707 000 11 22")).patient
    await _enrolled(ctx, w, w.p1)
    await _enrolled(ctx, w, w.p2, seed=2)
    await link_chat_by_phone(ctx, CHAT, w.p1.phone, "kk")
    records = await my_record(ctx, CHAT)
    assert sorted(r.patient_id for r in records) == sorted([w.p1.id, child.id])
    mine = {r.patient_id: r for r in records}
    assert mine[w.p1.id].face_photos == 2 and mine[w.p1.id].face_enrolled_by == "Emhana No. 5"
    assert mine[w.p1.id].consent_by == "nurse Dana" and mine[child.id].face_photos == 0
    assert mine[w.p1.id].channels == ["telegram"]
    assert {c.kind for c in mine[w.p1.id].changes} == {"consent_recorded", "face_enrolled"}
    dumped = record_json(records).decode() + record_csv(records).decode("utf-8-sig")
    for stranger in (w.p2, namesake):
        assert stranger.phone not in dumped and stranger.iin not in dumped
    assert f'"patient_id": {w.p2.id},' not in dumped and f'"patient_id": {namesake.id},' not in dumped
    assert await my_record(ctx, 999) == []


async def test_unlink_forgets_the_chat_and_keeps_the_visits(ctx, clinic_world):
    w = clinic_world
    await link_chat_by_phone(ctx, CHAT, w.p1.phone, "kk")
    visit = await register_visit(
        ctx,
        clinic_id=w.clinic.id,
        doctor_id=w.doctor.id,
        patient_id=w.p1.id,
        start=T0 + dt.timedelta(hours=1),
        duration=dt.timedelta(minutes=20),
        mode=VisitMode.IN_PERSON,
        service_code="consult",
    )
    assert await unlink_chat(ctx, CHAT) == 1
    async with ctx.uow(read_only=True) as uow:
        assert (await uow.patients.get(w.p1.id)).chat_id is None
        assert await uow.queries.chat_user(CHAT) is None
        assert (await uow.visits.get(visit.id)).id == visit.id
        payloads = [m.payload for m in await uow.outbox.by_recipient_kind("patient")]
    assert all(str(CHAT) not in p for p in payloads)
    # "stop all messages": no channel is left, SMS to the registered phone included (issue 14's routing)
    async with ctx.uow(read_only=True) as uow:
        patient = await uow.patients.get(w.p1.id)
        assert await patient_routes(uow, patient, frozenset(ChannelName)) == []
    assert await my_record(ctx, CHAT) == []


async def test_a_withdrawal_soon_after_a_phone_change_is_pointed_out_to_the_payer(ctx, clinic_world):
    """A clinic moves the patient's phone to a number it holds, links its own chat and withdraws, to bury the face
    evidence: the old chat was told of the move, and the payer's event says the withdrawal followed it."""
    w = clinic_world
    paid = Context.build(ctx.settings.model_copy(update={"payer_webhook_url": "https://payer.example/hook",
                                                          "payer_webhook_secret": "s" * 32}), ctx.uow, ctx.clock)
    await _enrolled(ctx, w, w.p1)
    await registry.upsert_patient(ctx, w.clinic.id, w.p1.iin, w.p1.full_name, "+7 707 123 45 67")
    await link_chat_by_phone(ctx, CHAT, "+7 707 123 45 67", "ru")
    await withdraw_consent(paid, CHAT)
    async with ctx.uow(read_only=True) as uow:
        events = [json.loads(m.payload) for m in await uow.outbox.pending(kind=OutboxKind.PAYER_EVENT)]
        rows = await uow.audit.records(f"clinic:{w.clinic.id}")
    withdrawn = [e for e in events if e.get("type") == "consent.withdrawn" or "consent.withdrawn" in json.dumps(e)]
    assert withdrawn and '"after_phone_change": true' in json.dumps(withdrawn[-1])
    assert "phone_changed_at" in rows[-1].details
