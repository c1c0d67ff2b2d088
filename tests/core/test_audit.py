import asyncio
import datetime as dt
import subprocess
import sys

import pytest
import sqlalchemy as sa

from core.audit import find_break
from core.db import tables as t
from core.model import VisitMode
from core.services import codes, visits


async def test_tampering_in_the_middle_is_detected_and_located(ctx, clinic_world):
    async with ctx.uow() as uow:
        records = await uow.audit.records()
    assert len(records) >= 5 and find_break(records) is None
    target = records[2].seq
    async with ctx.uow() as uow:
        await uow.conn.execute(sa.update(t.audit_log).where(t.audit_log.c.seq == target)
                               .values(details='{"clinic": 999}'))
        await uow.commit()

    async with ctx.uow() as uow:
        broken = find_break(await uow.audit.records())
    assert broken.seq == target and "altered" in broken.reason


async def test_deleting_a_row_is_detected_and_located(ctx, clinic_world):
    async with ctx.uow() as uow:
        await uow.conn.execute(sa.delete(t.audit_log).where(t.audit_log.c.seq == 3))
        await uow.commit()
    async with ctx.uow() as uow:
        broken = find_break(await uow.audit.records())
    assert broken.seq == 3 and "missing" in broken.reason


def _cli(db_url, *args):
    env = {"RASTAU_DATABASE_URL": db_url, "PATH": "/usr/bin:/bin", "RASTAU_MODE": "dev"}
    return subprocess.run([sys.executable, "-m", "core.cli", *args], capture_output=True, text=True, env=env,
                          cwd=str(__import__("pathlib").Path(__file__).parents[2]), timeout=60)


@pytest.mark.slow  # the rastau CLI as processes
async def test_cli_verifies_the_chain_and_names_the_first_broken_row(ctx, clinic_world, db_url):
    ok = _cli(db_url, "audit-verify")
    assert ok.returncode == 0 and "intact" in ok.stdout, ok.stderr
    async with ctx.uow() as uow:
        await uow.conn.execute(sa.update(t.audit_log).where(t.audit_log.c.seq == 4).values(actor="someone"))
        await uow.commit()
    bad = _cli(db_url, "audit-verify")
    assert bad.returncode == 1 and "BROKEN at row 4" in bad.stdout


@pytest.mark.slow  # the rastau CLI as processes
async def test_cli_notices_rows_deleted_from_the_end(ctx, clinic_world, db_url):
    async with ctx.uow() as uow:
        last, _ = await uow.audit.head()
        await uow.conn.execute(sa.delete(t.audit_log).where(t.audit_log.c.seq == last))
        await uow.commit()
    bad = _cli(db_url, "audit-verify")
    assert bad.returncode == 1 and f"BROKEN at row {last}" in bad.stdout


async def test_concurrent_writers_chain_every_row_once_and_in_order(ctx, clinic_world):
    """Code checks verifying at once each add their event's audit row under the chain head's lock: no row lost, no
    sequence number taken twice, the chain intact; a transaction with several rows chains them together."""
    made = [await visits.register_visit(ctx, clinic_id=clinic_world.clinic.id, doctor_id=clinic_world.doctor.id,
                                        patient_id=clinic_world.p1.id, start=ctx.clock.now() + dt.timedelta(minutes=5),
                                        duration=dt.timedelta(minutes=20), mode=VisitMode.ONLINE,
                                        service_code="B03.001") for _ in range(12)]
    issued = {v.id: (await codes.issue_code(ctx, v.id)).code for v in made}
    async with ctx.uow(read_only=True) as uow:
        before = len(await uow.audit.records())

    async def two_rows(n: int) -> None:
        async with ctx.uow() as uow:
            for part in ("a", "b"):
                await uow.audit.append(ctx.clock.now(), "test", "test.pair", f"pair:{n}{part}", {})
            await uow.commit()

    checks = await asyncio.gather(*(codes.verify_code(ctx, clinic_world.clinic.id, v.id, issued[v.id]) for v in made),
                                  *(two_rows(n) for n in range(4)))
    assert [c.outcome.value for c in checks[:len(made)]] == ["verified"] * len(made)
    async with ctx.uow(read_only=True) as uow:
        records = await uow.audit.records()
        head = await uow.audit.head()
    assert find_break(records) is None and head == (records[-1].seq, records[-1].hash)
    added = records[before:]
    assert len(added) == len(made) + 8
    assert sorted(r.subject for r in added if r.action == "visit.verify") == sorted(f"visit:{v.id}" for v in made)
    pairs = [r.subject for r in added if r.action == "test.pair"]
    assert all(pairs[i][:-1] == pairs[i + 1][:-1] for i in range(0, 8, 2))  # each pair's rows are adjacent
