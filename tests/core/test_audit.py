import subprocess
import sys

import pytest
import sqlalchemy as sa

from core.audit import find_break
from core.db import tables as t


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
