import asyncio
import datetime as dt

import pytest
import sqlalchemy as sa
from alembic import command

from core.audit import GENESIS, GLOBAL_CHAIN, OPERATOR_CHAIN, chain_hash, clinic_chain, find_break
from core.cli import main as rastau
from core.db import tables as t
from core.db.engine import create_engine
from core.db.migrate import alembic_config, upgrade_to_head
from core.db.uow import UnitOfWorkFactory
from core.model import VisitMode
from core.services import chat, codes, registry, visits
from tests.commands import run_command_async


def _in_chain(chain: str, seq: int) -> sa.ColumnElement[bool]:
    return sa.and_(t.audit_log.c.chain == chain, t.audit_log.c.seq == seq)


async def _verified(uow, chain: str):
    heads = {head.chain: head for head in await uow.audit.heads()}
    return find_break(chain, await uow.audit.records(chain), heads.get(chain))


async def test_tampering_in_the_middle_is_detected_and_located(ctx, clinic_world):
    chain = clinic_chain(clinic_world.clinic.id)
    async with ctx.uow() as uow:
        records = await uow.audit.records(chain)
        assert len(records) >= 5 and await _verified(uow, chain) is None
        target = records[2].seq
        await uow.conn.execute(sa.update(t.audit_log).where(_in_chain(chain, target)).values(details='{"clinic": 999}'))
        await uow.commit()

    async with ctx.uow() as uow:
        broken = await _verified(uow, chain)
    assert (broken.chain, broken.seq) == (chain, target) and "altered" in broken.reason


async def test_deleting_a_row_is_detected_and_located(ctx, clinic_world):
    chain = clinic_chain(clinic_world.clinic.id)
    async with ctx.uow() as uow:
        await uow.conn.execute(sa.delete(t.audit_log).where(_in_chain(chain, 3)))
        await uow.commit()
    async with ctx.uow() as uow:
        broken = await _verified(uow, chain)
    assert broken.seq == 3 and "missing" in broken.reason


async def test_a_clinics_records_chain_in_its_own_chain_and_chat_links_in_the_operators(ctx, clinic_world):
    """The clinic's creation opens its chain, its staff, patients and visits follow; a chat link (which may reach
    patients of several clinics) goes to the operator's chain; a fresh database has no global chain."""
    other = await registry.create_clinic(ctx, "Polyclinic No. 7")
    await chat.link_chat_by_phone(ctx, 5001, "+77011234567", "kk")
    async with ctx.uow(read_only=True) as uow:
        mine = await uow.audit.records(clinic_chain(clinic_world.clinic.id))
        theirs = await uow.audit.records(clinic_chain(other.id))
        operator = await uow.audit.records(OPERATOR_CHAIN)
        chains = await uow.audit.chains()
    assert [r.action for r in mine[:3]] == ["clinic.create", "doctor.create", "clinic_admin.create"]
    assert [r.seq for r in mine] == list(range(1, len(mine) + 1))
    assert [(r.seq, r.action) for r in theirs] == [(1, "clinic.create")]
    assert [r.action for r in operator] == ["chat.link"]
    assert GLOBAL_CHAIN not in chains


async def _cli(db_url, *args):
    return await run_command_async(rastau, "rastau", {"RASTAU_DATABASE_URL": db_url, "RASTAU_MODE": "dev"}, *args)


async def test_cli_verifies_the_chain_and_names_the_first_broken_row(ctx, clinic_world, db_url):
    chain = clinic_chain(clinic_world.clinic.id)
    ok = await _cli(db_url, "audit-verify")
    assert ok.returncode == 0 and f"audit chain {chain} intact" in ok.stdout, ok.stderr
    async with ctx.uow() as uow:
        await uow.conn.execute(sa.update(t.audit_log).where(_in_chain(chain, 4)).values(actor="someone"))
        await uow.commit()
    bad = await _cli(db_url, "audit-verify")
    assert bad.returncode == 1 and f"audit chain {chain} BROKEN at row 4" in bad.stdout


async def test_cli_notices_rows_deleted_from_the_end(ctx, clinic_world, db_url):
    chain = clinic_chain(clinic_world.clinic.id)
    async with ctx.uow() as uow:
        last = {head.chain: head.seq for head in await uow.audit.heads()}[chain]
        await uow.conn.execute(sa.delete(t.audit_log).where(_in_chain(chain, last)))
        await uow.commit()
    bad = await _cli(db_url, "audit-verify")
    assert bad.returncode == 1 and f"audit chain {chain} BROKEN at row {last}" in bad.stdout


async def test_tampering_in_one_clinics_chain_is_named_and_the_other_clinics_chain_still_verifies(
        ctx, clinic_world, db_url):
    """A clinic that rewrites one of its rows (say, who verified a visit) breaks its own chain only: the check
    names that chain and row, and another clinic's chain, checked alone, still verifies."""
    other = await registry.create_clinic(ctx, "Polyclinic No. 7")
    await registry.add_doctor(ctx, other.id, "Dana Ermekova", "+7 701 999 88 77")
    tampered, untouched = clinic_chain(clinic_world.clinic.id), clinic_chain(other.id)
    async with ctx.uow() as uow:
        await uow.conn.execute(sa.update(t.audit_log).where(_in_chain(tampered, 2)).values(actor="clinic_system"))
        await uow.commit()

    everything = await _cli(db_url, "audit-verify")
    assert everything.returncode == 1, everything.stderr
    assert f"audit chain {tampered} BROKEN at row 2: row 2 was altered" in everything.stdout
    assert f"audit chain {untouched} intact: 2 rows" in everything.stdout
    alone = await _cli(db_url, "audit-verify", "--clinic", str(other.id))
    assert alone.returncode == 0 and alone.stdout.strip() == f"audit chain {untouched} intact: 2 rows"
    named = await _cli(db_url, "audit-verify", "--clinic", str(clinic_world.clinic.id))
    assert named.returncode == 1 and untouched not in named.stdout
    unknown = await _cli(db_url, "audit-verify", "--clinic", "999")
    assert unknown.returncode == 2 and "clinic 999 not found" in unknown.stderr


async def test_a_clinics_whole_chain_deleted_or_replaced_by_another_clinics_rows_is_found(ctx, clinic_world, db_url):
    """Deleting every row and the head of a clinic's chain leaves no broken hash to find; the clinic's existence
    does: its creation opened its chain. Copying another clinic's valid rows in their place fails too, since a
    chain's first row points to a genesis made from the chain's own name."""
    other = await registry.create_clinic(ctx, "Polyclinic No. 7")
    erased = clinic_chain(other.id)
    async with ctx.uow() as uow:
        await uow.conn.execute(sa.delete(t.audit_log).where(t.audit_log.c.chain == erased))
        await uow.conn.execute(sa.delete(t.audit_head).where(t.audit_head.c.chain == erased))
        await uow.commit()
    gone = await _cli(db_url, "audit-verify")
    assert gone.returncode == 1 and f"audit chain {erased} BROKEN at row 1: clinic {other.id} exists" in gone.stdout

    source = clinic_chain(clinic_world.clinic.id)
    async with ctx.uow() as uow:
        rows = [dict(r._mapping, chain=erased) for r in
                (await uow.conn.execute(sa.select(t.audit_log).where(t.audit_log.c.chain == source))).all()]
        head = (await uow.conn.execute(sa.select(t.audit_head).where(t.audit_head.c.chain == source))).one()
        await uow.conn.execute(sa.insert(t.audit_log), rows)
        await uow.conn.execute(sa.insert(t.audit_head).values(chain=erased, seq=head.seq, last_hash=head.last_hash))
        await uow.commit()
    copied = await _cli(db_url, "audit-verify", "--clinic", str(other.id))
    assert copied.returncode == 1 and f"audit chain {erased} BROKEN at row 1: row 1 does not point" in copied.stdout


async def test_concurrent_writers_chain_every_row_once_and_in_order(ctx, clinic_world):
    """Code checks verifying at once each add their event's audit row under the chain head's lock: no row lost, no
    sequence number taken twice, the chain intact; a transaction with several rows chains them together."""
    chain = clinic_chain(clinic_world.clinic.id)
    made = [await visits.register_visit(ctx, clinic_id=clinic_world.clinic.id, doctor_id=clinic_world.doctor.id,
                                        patient_id=clinic_world.p1.id, start=ctx.clock.now() + dt.timedelta(minutes=5),
                                        duration=dt.timedelta(minutes=20), mode=VisitMode.ONLINE,
                                        service_code="B03.001") for _ in range(12)]
    issued = {v.id: (await codes.issue_code(ctx, v.id)).code for v in made}
    async with ctx.uow(read_only=True) as uow:
        before = len(await uow.audit.records(chain))

    async def two_rows(n: int) -> None:
        async with ctx.uow() as uow:
            for part in ("a", "b"):
                await uow.audit.append(ctx.clock.now(), "test", "test.pair", f"pair:{n}{part}", {},
                                       clinic_id=clinic_world.clinic.id)
            await uow.commit()

    checks = await asyncio.gather(*(codes.verify_code(ctx, clinic_world.clinic.id, v.id, issued[v.id]) for v in made),
                                  *(two_rows(n) for n in range(4)))
    assert [c.outcome.value for c in checks[:len(made)]] == ["verified"] * len(made)
    async with ctx.uow(read_only=True) as uow:
        records = await uow.audit.records(chain)
        assert await _verified(uow, chain) is None
    added = records[before:]
    assert len(added) == len(made) + 8
    assert sorted(r.subject for r in added if r.action == "visit.verify") == sorted(f"visit:{v.id}" for v in made)
    pairs = [r.subject for r in added if r.action == "test.pair"]
    assert all(pairs[i][:-1] == pairs[i + 1][:-1] for i in range(0, 8, 2))  # each pair's rows are adjacent


async def test_a_row_hashed_by_the_database_verifies_by_the_python_rule(ctx, clinic_world):
    """PostgreSQL hashes a chain's next row itself (one statement); the text it hashes must be the one
    core.audit.chain_hash hashes, Kazakh letters, quotes and backslashes in the details included."""
    details = {"reason": 'Науқас келмеді: "жоқ" \\ ёқ', "n": 7, "nested": {"b": [1, None], "a": True}}
    for _ in range(2):
        async with ctx.uow() as uow:
            await uow.audit.append(ctx.clock.now(), "doctor", "test.text", "visit:1", details,
                                   clinic_id=clinic_world.clinic.id)
            await uow.commit()
    chain = clinic_chain(clinic_world.clinic.id)
    async with ctx.uow(read_only=True) as uow:
        rows = [r for r in await uow.audit.records(chain) if r.action == "test.text"]
        assert await _verified(uow, chain) is None
    assert [r.details for r in rows] == [details, details]


async def test_two_clinics_writing_at_once_each_chain_every_row(ctx, clinic_world):
    """Code checks of two clinics at once, and transactions writing to both clinics' chains and the operator's in
    opposite orders: every chain intact, every row in its own clinic's chain, nothing lost, no deadlock."""
    other = await registry.create_clinic(ctx, "Polyclinic No. 7")
    other_doctor = await registry.add_doctor(ctx, other.id, "Dana Ermekova", "+7 701 999 88 77")
    other_patient = (await registry.upsert_patient(ctx, other.id, "021231500015", "Aru K.", "+7 705 111 22 33",
                                                   "kk")).patient
    start = ctx.clock.now() + dt.timedelta(minutes=5)
    made = [await visits.register_visit(ctx, clinic_id=clinic, doctor_id=doctor, patient_id=patient, start=start,
                                        duration=dt.timedelta(minutes=20), mode=VisitMode.ONLINE,
                                        service_code="B03.001")
            for clinic, doctor, patient in [(clinic_world.clinic.id, clinic_world.doctor.id, clinic_world.p1.id),
                                            (other.id, other_doctor.id, other_patient.id)] * 8]
    issued = {v.id: (await codes.issue_code(ctx, v.id)).code for v in made}
    chains = [clinic_chain(clinic_world.clinic.id), clinic_chain(other.id), OPERATOR_CHAIN]
    async with ctx.uow(read_only=True) as uow:
        before = {chain: len(await uow.audit.records(chain)) for chain in chains}

    async def across(n: int) -> None:
        clinic_ids = [clinic_world.clinic.id, other.id, None]
        async with ctx.uow() as uow:
            for clinic_id in clinic_ids if n % 2 else reversed(clinic_ids):
                await uow.audit.append(ctx.clock.now(), "test", "test.across", f"across:{n}", {}, clinic_id=clinic_id)
            await uow.commit()

    checks = await asyncio.gather(*(codes.verify_code(ctx, v.clinic_id, v.id, issued[v.id]) for v in made),
                                  *(across(n) for n in range(6)))
    assert [c.outcome.value for c in checks[:len(made)]] == ["verified"] * len(made)
    async with ctx.uow(read_only=True) as uow:
        for chain in chains:
            assert await _verified(uow, chain) is None, chain
        added = {chain: (await uow.audit.records(chain))[before[chain]:] for chain in chains}
    for chain, clinic_id in zip(chains, [clinic_world.clinic.id, other.id, None], strict=True):
        verified = {r.subject for r in added[chain] if r.action == "visit.verify"}
        assert verified == {f"visit:{v.id}" for v in made if v.clinic_id == clinic_id}
        assert sorted(r.subject for r in added[chain] if r.action == "test.across") == [
            f"across:{n}" for n in range(6)]


async def _chain_written_before_0006(engine, now: dt.datetime) -> list[dict]:
    """At revision 0005: three rows of the one global chain, its head moved to them, and clinic 1."""
    await upgrade_to_head(engine, "0005")
    prev, rows = GENESIS, []
    for seq, (action, subject) in enumerate([("clinic.create", "clinic:1"), ("doctor.create", "doctor:1"),
                                             ("visit.verify", "visit:1")], start=1):
        stamp = (now + dt.timedelta(minutes=seq)).isoformat()
        digest = chain_hash(seq, stamp, "admin", action, subject, {}, prev)
        rows.append(dict(seq=seq, at=stamp, actor="admin", action=action, subject=subject, details="{}",
                         prev_hash=prev, hash=digest))
        prev = digest
    async with engine.begin() as conn:
        await conn.execute(sa.text("INSERT INTO audit_log (seq, at, actor, action, subject, details, prev_hash, "
                                   "hash) VALUES (:seq, :at, :actor, :action, :subject, :details, :prev_hash, :hash)"),
                           rows)
        await conn.execute(sa.text("UPDATE audit_head SET seq = 3, last_hash = :h WHERE id = 1"), {"h": prev})
        await conn.execute(sa.text("INSERT INTO clinics (id, name, created_at) VALUES (1, 'Emhana', :t)"
                                   ).bindparams(sa.bindparam("t", type_=sa.DateTime())),
                           {"t": now.replace(tzinfo=None)})
    return rows


async def test_the_global_chain_written_before_0006_stays_verifiable_and_closed(db_url):
    """Upgrading a database whose audit log already holds rows: they keep their hashes as the closed global chain
    (intact, its head where it was), and the next records open per-clinic chains instead of extending it."""
    engine = create_engine(db_url)
    now = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)
    try:
        rows = await _chain_written_before_0006(engine, now)
        await upgrade_to_head(engine)
        async with UnitOfWorkFactory(engine)() as uow:
            await uow.audit.append(now, "admin", "doctor.create", "doctor:2", {"clinic": 1}, clinic_id=1)
            await uow.commit()
        async with UnitOfWorkFactory(engine)(read_only=True) as uow:
            heads = {head.chain: (head.seq, head.hash) for head in await uow.audit.heads()}
            old = await uow.audit.records(GLOBAL_CHAIN)
            assert await _verified(uow, GLOBAL_CHAIN) is None and await _verified(uow, clinic_chain(1)) is None
    finally:
        await engine.dispose()
    assert heads == {GLOBAL_CHAIN: (3, rows[-1]["hash"]), clinic_chain(1): (1, heads[clinic_chain(1)][1])}
    assert [(r.seq, r.subject, r.hash) for r in old] == [(r["seq"], r["subject"], r["hash"]) for r in rows]
    ok = await _cli(db_url, "audit-verify")  # clinic 1's creation lies in the global chain: its own chain is complete
    assert ok.returncode == 0 and "audit chain global intact: 3 rows" in ok.stdout, ok.stdout + ok.stderr


async def test_a_downgrade_below_0006_keeps_the_global_chain_and_refuses_to_merge_clinic_chains(db_url):
    """Back to one chain is possible only while every row is in the global chain (its head returns to id 1);
    once a clinic has a chain of its own, merging would need new hashes, so the downgrade is refused."""
    engine = create_engine(db_url)
    now = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)

    def to_0005(sync_conn) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = sync_conn
        command.downgrade(cfg, "0005")

    try:
        rows = await _chain_written_before_0006(engine, now)
        await upgrade_to_head(engine)
        async with engine.begin() as conn:
            await conn.run_sync(to_0005)
        async with engine.connect() as conn:
            head = (await conn.execute(sa.text("SELECT id, seq, last_hash FROM audit_head"))).all()
            kept = (await conn.execute(sa.text("SELECT seq, hash FROM audit_log ORDER BY seq"))).all()
        assert [tuple(r) for r in head] == [(1, 3, rows[-1]["hash"])]
        assert [tuple(r) for r in kept] == [(r["seq"], r["hash"]) for r in rows]

        await upgrade_to_head(engine)
        async with UnitOfWorkFactory(engine)() as uow:
            await uow.audit.append(now, "admin", "doctor.create", "doctor:2", {"clinic": 1}, clinic_id=1)
            await uow.commit()
        with pytest.raises(RuntimeError, match="downgrade is refused"):
            async with engine.begin() as conn:
                await conn.run_sync(to_0005)
    finally:
        await engine.dispose()
