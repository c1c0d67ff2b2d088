"""The payer's auditors in the chat: they link like admins and hear every "I wasn't there" and every disputed change
of the clinics they audit at once, in kk or ru, whatever the clinic's own admins do; and a daily summary across their
clinics with its red flags and a CSV. The real aiogram Bot against the Bot API stand-in, on SQLite and PostgreSQL."""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import re

import pytest
from pydantic import SecretStr

from bot.auditor_texts import FLAG_NAME
from bot.delivery.webhook import PayerWebhookSender
from bot.scheduling import auditor_summary_catch_up, auditor_summary_job, build_scheduler, checkpoint_job
from core import audit
from core.checkpoint import read_checkpoint
from core.model import Actor, OutboxKind, OutboxStatus, VerificationMethod
from core.services import auditors, flag_lists, registry
from core.services.flags import FlagKind
from core.services.visits import close_expired_windows, patient_disputes
from core.signing import Signer, new_seed_b64
from tests.bot.support import User, last_to, link, say_not_there, texts_to, visit
from tests.conftest import patient_change_rows

NOTICE = {"kk": "қабылдауда БОЛМАҒАНЫН айтады", "ru": "НЕ было"}
REASON = {"kk": "неге болмағанын түсіндірді", "ru": "объяснил, почему приёма"}
CHANGE = {"kk": "өзгерісті СҰРАМАҒАНЫН айтады", "ru": "НЕ просил(а) об изменении"}
AUDITOR_PHONE, OTHER_AUDITOR_PHONE, GLOBAL_AUDITOR_PHONE = "+7 707 100 20 30", "+7 707 100 20 31", "+7 707 100 20 32"


async def disputed_visit(ctx, w, patient):
    """A visit of the clinic_world's doctor two hours ago, never verified, that the patient disputes."""
    v = await visit(ctx, w, patient, -120)
    await close_expired_windows(ctx)
    await patient_disputes(ctx, v.id, [patient.id])
    return v


async def statuses(ctx, kind: OutboxKind) -> dict[tuple[str, int], str]:
    async with ctx.uow(read_only=True) as uow:
        rows = await uow.outbox.by_recipient_kind("auditor") + await uow.outbox.by_recipient_kind("admin")
    return {(r.recipient_kind, r.recipient_id): r.status for r in rows if r.kind == kind.value}


@pytest.mark.parametrize("language", ["kk", "ru"])
async def test_the_auditor_hears_a_dispute_at_once_and_its_reason(ctx, clinic_world, world, standin, language):
    w = clinic_world
    other = await registry.create_clinic(ctx, "Another polyclinic")
    ours = await auditors.add_auditor(ctx, "Dana Auditor", AUDITOR_PHONE, clinic_ids=[w.clinic.id])
    await auditors.add_auditor(ctx, "Erlan Auditor", OTHER_AUDITOR_PHONE, clinic_ids=[other.id])
    await auditors.add_auditor(ctx, "Fund Auditor", GLOBAL_AUDITOR_PHONE, all_clinics=True, language="kk")
    auditor, outsider, everyone = User(9101), User(9102), User(9103)
    await link(world, auditor, AUDITOR_PHONE, language)
    assert {"kk": "төлеушінің аудиторысыз", "ru": "аудитор плательщика"}[language] in last_to(standin, auditor.id).text
    await link(world, outsider, OTHER_AUDITOR_PHONE, "ru")
    await link(world, everyone, GLOBAL_AUDITOR_PHONE, "kk")
    patient = User(9104)
    await link(world, patient, w.p1.phone, "kk")
    async with ctx.uow(read_only=True) as uow:
        assert (await uow.auditors.get(ours.id)).chat_id == auditor.id

    v = await visit(ctx, w, w.p1, -120)
    await close_expired_windows(ctx)
    await world.deliver()
    await say_not_there(world, patient, v.id)
    await world.deliver()
    notice = last_to(standin, auditor.id).text
    assert NOTICE[language] in notice and f"№{v.id}" in notice and w.clinic.name in notice
    assert "********" + w.p1.iin[-4:] in notice and w.p1.iin not in notice
    assert NOTICE["kk"] in last_to(standin, everyone.id).text, "an auditor of every clinic hears it too"
    assert not any(f"№{v.id}" in text for text in texts_to(standin, outsider.id)), "another clinic's auditor does not"

    await world.send(patient, "Мен ол күні қалада болмадым")
    await world.deliver()
    update = last_to(standin, auditor.id).text
    assert REASON[language] in update and "Мен ол күні қалада болмадым" in update


async def test_a_clinic_without_a_linked_admin_cannot_keep_a_dispute_from_the_auditor(ctx, clinic_world, world,
                                                                                      standin):
    """The clinic's admin never links a chat (or the clinic has none at all): the dispute still reaches the payer."""
    w = clinic_world
    bare = await registry.create_clinic(ctx, "No admin polyclinic")
    doctor = await registry.add_doctor(ctx, bare.id, "Berik Doctor", "+7 701 999 00 11")
    patient = (await registry.upsert_patient(ctx, bare.id, "880725400129", "Aigerim S.", "+7 705 111 22 33")).patient
    auditor_row = await auditors.add_auditor(ctx, "Dana Auditor", AUDITOR_PHONE, clinic_ids=[w.clinic.id, bare.id])
    auditor = User(9201)
    await link(world, auditor, AUDITOR_PHONE, "ru")

    first = await disputed_visit(ctx, w, w.p1)  # w's admin exists but never linked a chat
    world_bare = type("W", (), {"clinic": bare, "doctor": doctor})
    second = await disputed_visit(ctx, world_bare, patient)  # this clinic has no admin at all
    await world.deliver()
    notices = [t for t in texts_to(standin, auditor.id) if NOTICE["ru"] in t]
    assert sorted(re.search(r"№(\d+)", notice).group(1) for notice in notices) == sorted([str(first.id),
                                                                                        str(second.id)])
    sent = await statuses(ctx, OutboxKind.DISPUTE_NOTICE)
    assert sent[("auditor", auditor_row.id)] == OutboxStatus.SENT.value
    assert sent[("admin", w.admin.id)] == OutboxStatus.SKIPPED.value, "the unlinked admin got nothing"


async def test_an_enrolment_dispute_reaches_the_auditor(ctx, clinic_world, world, standin):
    w = clinic_world
    await auditors.add_auditor(ctx, "Dana Auditor", AUDITOR_PHONE, clinic_ids=[w.clinic.id])
    auditor, patient = User(9301), User(9302)
    await link(world, auditor, AUDITOR_PHONE, "kk")
    await link(world, patient, w.p2.phone, "ru")
    await registry.record_consent(ctx, w.clinic.id, w.p2.id, "registry desk")
    await registry.enrol_face(ctx, w.clinic.id, w.p2.id, [tuple([1.0] + [0.0] * 127)])
    change_id = next(r.id for r in await patient_change_rows(ctx, w.p2.id) if r.kind == "face_enrolled")
    await world.deliver()
    await world.press(patient, f"chg:{change_id}")
    await world.deliver()
    notice = last_to(standin, auditor.id).text
    assert CHANGE["kk"] in notice and f"№{change_id}" in notice and w.clinic.name in notice


async def test_a_removed_auditor_hears_nothing_more(ctx, clinic_world, world, standin):
    """Queued while the auditor read the clinic, removed before it went out: the renderer reads the auditor at send
    time (a scope narrowed in the database meets the same check)."""
    w = clinic_world
    removed = await auditors.add_auditor(ctx, "Dana Auditor", AUDITOR_PHONE, clinic_ids=[w.clinic.id])
    auditor = User(9401)
    await link(world, auditor, AUDITOR_PHONE, "ru")
    before = len(texts_to(standin, auditor.id))
    await disputed_visit(ctx, w, w.p1)
    await auditors.remove_auditor(ctx, removed.id)
    await world.deliver()
    assert len(texts_to(standin, auditor.id)) == before
    await world.send(auditor, "/start")  # a removed auditor's chat is no auditor's any more
    await world.press(auditor, "lang:ru")
    assert "аудитор" not in last_to(standin, auditor.id).text


async def test_stop_unlinks_the_auditor(ctx, clinic_world, world, standin):
    w = clinic_world
    row = await auditors.add_auditor(ctx, "Dana Auditor", AUDITOR_PHONE, clinic_ids=[w.clinic.id])
    auditor = User(9501)
    await link(world, auditor, AUDITOR_PHONE, "ru")
    await world.send(auditor, "/stop")
    async with ctx.uow(read_only=True) as uow:
        assert (await uow.auditors.get(row.id)).chat_id is None
    before = len(texts_to(standin, auditor.id))
    await disputed_visit(ctx, w, w.p1)
    await world.deliver()
    assert len(texts_to(standin, auditor.id)) == before


# --- the daily summary --------------------------------------------------------------------------------------------

async def test_daily_summary_across_the_auditors_clinics_with_flags_and_csv(ctx, clinic_world, world, standin):
    """Yesterday: three visits in the auditor's clinic (one by code, one disputed, one never verified), one visit
    after the patient's death; another clinic outside the scope stays out."""
    w = clinic_world
    other = await registry.create_clinic(ctx, "Outside polyclinic")
    row = await auditors.add_auditor(ctx, "Dana Auditor", AUDITOR_PHONE, clinic_ids=[w.clinic.id])
    auditor = User(9601)
    await link(world, auditor, AUDITOR_PHONE, "ru")
    coded = await visit(ctx, w, w.p1, 0)
    async with ctx.uow() as uow:
        stored = await uow.visits.get(coded.id, lock=True)
        stored.verify(VerificationMethod.CODE, Actor.DOCTOR, ctx.clock.now())
        await uow.visits.save(stored)
        await uow.commit()
    await disputed_visit(ctx, w, w.p2)
    await visit(ctx, w, w.p1, 60)
    await world.deliver()  # the dispute notice, at once
    await flag_lists.import_deaths(ctx, f"{w.p2.iin},2025-01-01\n", "test list")
    ctx.clock.advance(dt.timedelta(days=1))
    await close_expired_windows(ctx)

    assert await auditor_summary_job(ctx) == 1
    assert await auditor_summary_job(ctx) == 0 and await auditor_summary_catch_up(ctx) == 0, "never twice"
    await world.deliver()
    text_msg, csv_msg = standin.messages_to(auditor.id)[-2:]
    assert w.clinic.name in text_msg.text and other.name not in text_msg.text
    assert "приёмы — 3" in text_msg.text and "код — 1" in text_msg.text and "оспорены — 1" in text_msg.text
    assert "красн" in text_msg.text and "после смерти пациента" in text_msg.text
    filename, data = csv_msg.document
    assert csv_msg.method == "sendDocument" and filename == f"rastau-auditor-{row.id}-2026-11-25.csv"
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    assert rows[0][:3] == ["Клиника", "Название клиники", "Приёмы"] and rows[1][:3] == [str(w.clinic.id),
                                                                                        w.clinic.name, "3"]
    flags = rows[rows.index([]) + 2:]
    assert FlagKind.AFTER_DEATH.value in [f[3] for f in flags]


async def test_every_flag_kind_has_a_name_in_both_languages(world):
    assert set(FLAG_NAME) == set(FlagKind)
    with world.i18n.context():
        names = {}
        for lang in ("kk", "ru"):
            with world.i18n.use_locale(lang):
                names[lang] = [str(FLAG_NAME[k]) for k in FlagKind]
    assert all(kk != ru for kk, ru in zip(names["kk"], names["ru"], strict=True))
    assert len(set(names["kk"])) == len(FlagKind) == len(set(names["ru"]))


async def test_the_auditor_receives_each_new_checkpoint_as_a_signed_file(ctx, clinic_world, world, standin):
    await auditors.add_auditor(ctx, "Dana Auditor", AUDITOR_PHONE, all_clinics=True)
    auditor = User(9701)
    await link(world, auditor, AUDITOR_PHONE, "kk")
    signer = Signer.from_settings(ctx.settings.model_copy(update={"signing_key": SecretStr(new_seed_b64())}))
    assert await checkpoint_job(ctx, signer) == 1
    await world.deliver()
    sent = last_to(standin, auditor.id)
    filename, data = sent.document
    assert sent.method == "sendDocument" and filename.startswith("rastau-checkpoint-") and filename.endswith(".json")
    assert "Аудит журналының бақылау нүктесі" in sent.text and signer.key_id in sent.text
    checkpoint = read_checkpoint(data.decode(), signer.public)
    assert audit.clinic_chain(clinic_world.clinic.id) in {h.chain for h in checkpoint.heads}


async def test_the_scheduler_signs_checkpoints_and_posts_to_the_payer_when_configured(ctx, world):
    signer = Signer.from_settings(ctx.settings.model_copy(update={"signing_key": SecretStr(new_seed_b64())}))
    payer_ctx = dataclasses.replace(ctx, settings=ctx.settings.model_copy(update={
        "payer_webhook_url": "http://127.0.0.1:9/events", "payer_webhook_secret": SecretStr("x" * 16)}))
    sender = PayerWebhookSender(payer_ctx)
    jobs = {job.id: job for job in build_scheduler(ctx, world.dispatcher, signer=signer, payer=sender).get_jobs()}
    assert {"audit_checkpoint", "payer_webhook", "auditor_summary"} <= set(jobs)
    assert jobs["audit_checkpoint"].trigger.interval == dt.timedelta(minutes=ctx.settings.checkpoint_minutes)
    assert "audit_checkpoint" not in {job.id for job in build_scheduler(ctx, world.dispatcher).get_jobs()}
