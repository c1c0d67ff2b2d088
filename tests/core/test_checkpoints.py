"""Signed audit-chain checkpoints: whoever writes the database can rewrite a chain and recompute every hash so that the
chain holds again; a checkpoint signed before, and kept outside, still catches it. Tampering after a checkpoint (edit,
delete, re-hash) on SQLite and PostgreSQL, through ``rastau audit-checkpoint`` and ``rastau audit-verify
--checkpoint`` as the operator and the auditors run them."""
from __future__ import annotations

import base64
import json

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from core import audit
from core.checkpoint import BadCheckpoint, check_chain, first_break, read_checkpoint
from core.cli import main as rastau
from core.db import tables as t
from core.model import OutboxKind, Recipient
from core.services import auditors, registry
from core.services.checkpoints import checkpoint_now, push_checkpoint
from core.signing import Signer, new_seed_b64
from tests.commands import run_command_async
from tests.conftest import VALID_IINS

SEED = new_seed_b64()


@pytest.fixture
def signer(settings):
    return Signer.from_settings(settings.model_copy(update={"signing_key": SecretStr(SEED)}))


def _row(chain: str, seq: int) -> sa.ColumnElement[bool]:
    return sa.and_(t.audit_log.c.chain == chain, t.audit_log.c.seq == seq)


async def rewrite_and_rehash(ctx, chain: str, seq: int, **changes) -> None:
    """What an intruder with the database does: change row ``seq``, then recompute its hash, every later row's and
    the chain's head, so that the chain verifies again on its own."""
    async with ctx.uow() as uow:
        await uow.conn.execute(sa.update(t.audit_log).where(_row(chain, seq)).values(**changes))
        records = await uow.audit.records(chain)
        prev = audit.genesis(chain)
        for r in records:
            digest = audit.chain_hash(r.seq, r.at, r.actor, r.action, r.subject, r.details, prev)
            await uow.conn.execute(sa.update(t.audit_log).where(_row(chain, r.seq)).values(prev_hash=prev,
                                                                                          hash=digest))
            prev = digest
        await uow.conn.execute(sa.update(t.audit_head).where(t.audit_head.c.chain == chain).values(last_hash=prev))
        await uow.commit()


async def findings(ctx, checkpoints, chain: str):
    async with ctx.uow(read_only=True) as uow:
        records = await uow.audit.records(chain)
    return first_break([check_chain(h, records) for cp in checkpoints for h in cp.heads if h.chain == chain])


async def grow(ctx, clinic_id: int, n: int) -> None:
    for i in range(n):
        await registry.upsert_patient(ctx, clinic_id, VALID_IINS[2 + i % 3], f"Patient {i}", f"+7 747 000 11 2{i}")


async def test_a_checkpoint_holds_while_the_chains_only_grow(ctx, clinic_world, signer):
    checkpoint, text = await checkpoint_now(ctx, signer)
    chain = audit.clinic_chain(clinic_world.clinic.id)
    assert {h.chain for h in checkpoint.heads} >= {chain}
    await grow(ctx, clinic_world.clinic.id, 2)
    assert read_checkpoint(text, signer.public) == checkpoint
    for head in checkpoint.heads:
        assert await findings(ctx, [checkpoint], head.chain) is None


async def test_an_edited_row_is_named(ctx, clinic_world, signer):
    checkpoint, _ = await checkpoint_now(ctx, signer)
    chain = audit.clinic_chain(clinic_world.clinic.id)
    async with ctx.uow() as uow:
        await uow.conn.execute(sa.update(t.audit_log).where(_row(chain, 3)).values(actor="clinic_system"))
        await uow.commit()
    broken = await findings(ctx, [checkpoint], chain)
    assert broken is not None and broken.seq == 3 and "altered" in broken.reason


async def test_a_deleted_row_is_named(ctx, clinic_world, signer):
    checkpoint, _ = await checkpoint_now(ctx, signer)
    chain = audit.clinic_chain(clinic_world.clinic.id)
    async with ctx.uow() as uow:
        await uow.conn.execute(sa.delete(t.audit_log).where(_row(chain, 2)))
        await uow.commit()
    broken = await findings(ctx, [checkpoint], chain)
    assert broken is not None and broken.seq == 2 and "missing" in broken.reason


async def test_rows_cut_from_the_end_with_the_head_moved_back_are_caught(ctx, clinic_world, signer):
    """Delete the last rows and move the head back to the new last row: the chain alone verifies; the checkpoint
    says rows it signed are gone."""
    checkpoint, _ = await checkpoint_now(ctx, signer)
    chain = audit.clinic_chain(clinic_world.clinic.id)
    last = next(h.seq for h in checkpoint.heads if h.chain == chain)
    async with ctx.uow() as uow:
        await uow.conn.execute(sa.delete(t.audit_log).where(sa.and_(t.audit_log.c.chain == chain,
                                                                    t.audit_log.c.seq >= last - 1)))
        kept = [r for r in await uow.audit.records(chain)][-1]
        await uow.conn.execute(sa.update(t.audit_head).where(t.audit_head.c.chain == chain).values(
            seq=kept.seq, last_hash=kept.hash))
        await uow.commit()
        records, head = await uow.audit.records(chain), {h.chain: h for h in await uow.audit.heads()}[chain]
    assert audit.find_break(chain, records, head) is None, "the chain alone no longer shows it"
    broken = await findings(ctx, [checkpoint], chain)
    assert broken is not None and broken.seq == last - 1 and "deleted" in broken.reason


async def test_a_clinics_whole_chain_erased_with_its_head_is_caught(ctx, clinic_world, signer):
    checkpoint, _ = await checkpoint_now(ctx, signer)
    chain = audit.clinic_chain(clinic_world.clinic.id)
    async with ctx.uow() as uow:
        await uow.conn.execute(sa.delete(t.audit_log).where(t.audit_log.c.chain == chain))
        await uow.conn.execute(sa.delete(t.audit_head).where(t.audit_head.c.chain == chain))
        await uow.commit()
    broken = await findings(ctx, [checkpoint], chain)
    signed = next(h.seq for h in checkpoint.heads if h.chain == chain)
    assert broken is not None and broken.seq == 1 and f"all {signed} rows were deleted" in broken.reason


async def test_a_rewritten_and_rehashed_chain_fails_the_checkpoint_and_two_checkpoints_narrow_it(
        ctx, clinic_world, signer):
    chain = audit.clinic_chain(clinic_world.clinic.id)
    early, _ = await checkpoint_now(ctx, signer)
    early_seq = next(h.seq for h in early.heads if h.chain == chain)
    await grow(ctx, clinic_world.clinic.id, 3)
    late, _ = await checkpoint_now(ctx, signer)
    late_seq = next(h.seq for h in late.heads if h.chain == chain)
    await rewrite_and_rehash(ctx, chain, early_seq + 2, actor="admin")
    async with ctx.uow(read_only=True) as uow:
        records, head = await uow.audit.records(chain), {h.chain: h for h in await uow.audit.heads()}[chain]
    assert audit.find_break(chain, records, head) is None, "re-hashed: the chain alone verifies"

    alone = await findings(ctx, [late], chain)
    assert alone is not None and alone.seq == late_seq and "recomputed" in alone.reason
    narrowed = await findings(ctx, [late, early], chain)
    assert narrowed is not None and f"after {early_seq} and at or before {late_seq}" in narrowed.reason
    assert await findings(ctx, [early], chain) is None, "rows the early checkpoint signed are untouched"


async def test_a_checkpoint_file_changed_or_signed_with_another_key_is_refused(ctx, clinic_world, signer):
    _, text = await checkpoint_now(ctx, signer)
    document = json.loads(text)
    document["checkpoint"]["heads"][0]["seq"] += 1  # an intruder "moves" a checkpoint to match a shortened chain
    with pytest.raises(BadCheckpoint, match="signature does not hold"):
        read_checkpoint(json.dumps(document), signer.public)
    other = Signer.from_settings(ctx.settings.model_copy(update={
        "signing_key": SecretStr(new_seed_b64())}))
    with pytest.raises(BadCheckpoint, match="signature does not hold"):
        read_checkpoint(text, other.public)
    with pytest.raises(BadCheckpoint, match="not a checkpoint"):
        read_checkpoint("{}", signer.public)


async def test_checkpoints_go_to_the_linked_auditors_once_per_set_of_heads(ctx, clinic_world, signer):
    linked = await auditors.add_auditor(ctx, "Dana Auditor", "+7 707 100 20 30", all_clinics=True)
    await auditors.add_auditor(ctx, "Never linked", "+7 707 100 20 31", all_clinics=True)
    async with ctx.uow() as uow:
        await uow.auditors.set_chat("+77071002030", 9901)
        await uow.commit()
    assert await push_checkpoint(ctx, signer) == 1
    assert await push_checkpoint(ctx, signer) == 0, "the same heads: nothing new to push"
    await grow(ctx, clinic_world.clinic.id, 1)
    assert await push_checkpoint(ctx, signer) == 1
    async with ctx.uow(read_only=True) as uow:
        queued = await uow.outbox.pending(kind=OutboxKind.AUDIT_CHECKPOINT)
    assert [(r.recipient_kind, r.recipient_id) for r in queued] == [(Recipient.AUDITOR.value, linked.id)] * 2
    read_checkpoint(json.loads(queued[-1].payload)["file"], signer.public)


async def _cli(db_url: str, *args: str):
    env = {"RASTAU_DATABASE_URL": db_url, "RASTAU_MODE": "dev", "RASTAU_SIGNING_KEY": SEED}
    return await run_command_async(rastau, "rastau", env, *args)


async def test_the_operator_commands_make_and_check_a_checkpoint(ctx, clinic_world, db_url, tmp_path, signer):
    cp_file = tmp_path / "checkpoint.json"
    made = await _cli(db_url, "audit-checkpoint", "--out", str(cp_file))
    assert made.returncode == 0 and "written to" in made.stdout, made.stderr
    chain = audit.clinic_chain(clinic_world.clinic.id)
    ok = await _cli(db_url, "audit-verify", "--checkpoint", str(cp_file))
    assert ok.returncode == 0 and f"audit chain {chain} matches the checkpoint" in ok.stdout, ok.stdout + ok.stderr

    await rewrite_and_rehash(ctx, chain, 2, actor="clinic_system")
    bad = await _cli(db_url, "audit-verify", "--checkpoint", str(cp_file))
    assert bad.returncode == 1 and f"audit chain {chain} CHANGED since the checkpoint" in bad.stdout
    assert f"audit chain {chain} intact" in bad.stdout, "the re-hashed chain alone looks fine: only the checkpoint sees"

    public_file = tmp_path / "public.key"
    public_file.write_text(signer.public_b64)
    with_key = await _cli(db_url, "audit-verify", "--checkpoint", str(cp_file), "--public-key", str(public_file))
    assert with_key.returncode == 1
    forged = tmp_path / "forged.json"
    document = json.loads(cp_file.read_text())
    document["signature"] = base64.b64encode(b"\0" * 64).decode()
    forged.write_text(json.dumps(document))
    refused = await _cli(db_url, "audit-verify", "--checkpoint", str(forged))
    assert refused.returncode == 2 and "checkpoint refused" in refused.stderr
