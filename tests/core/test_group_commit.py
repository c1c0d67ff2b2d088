"""SQLite's group commit (core.db.uow.SqliteWriters): writers queued at once share one COMMIT, yet each is atomic
alone, and none is told "committed" unless the group's COMMIT succeeded."""
import asyncio

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from core.audit import clinic_chain, find_break
from core.db import tables as t
from core.errors import DatabaseUnavailable


@pytest.fixture
def sqlite_only(db_url):
    if not db_url.startswith("sqlite"):
        pytest.skip("group commit is SQLite's; PostgreSQL commits each writer itself")


def _count_commits(ctx) -> list[int]:
    commits = [0]

    @event.listens_for(ctx.uow.engine.sync_engine, "commit")
    def _on_commit(_conn):
        commits[0] += 1

    return commits


async def _writer(ctx, clinic_id: int, n: int, *, fail: bool = False, leave: bool = False) -> str:
    """Append one audit row marked `n` to the clinic's chain; `fail` raises after it, `leave` does not commit."""
    async with ctx.uow() as uow:
        await uow.conn.execute(sa.update(t.clinics).where(t.clinics.c.id == clinic_id).values(name=f"renamed {n}"))
        await uow.audit.append(ctx.clock.now(), "test", "group.write", f"writer:{n}", {}, clinic_id=clinic_id)
        if fail:
            await uow.audit.flush()  # its audit row is in the transaction when it fails
            raise RuntimeError(f"writer {n} fails")
        if not leave:
            await uow.commit()
    return "left" if leave else "committed"


async def _subjects(ctx, chain: str) -> list[str]:
    async with ctx.uow(read_only=True) as uow:
        records = await uow.audit.records(chain)
        heads = {head.chain: head for head in await uow.audit.heads()}
        assert find_break(chain, records, heads.get(chain)) is None, "the chain holds after grouped writers"
    return [r.subject for r in records if r.action == "group.write"]


async def test_queued_writers_share_commits_and_a_failing_one_takes_back_only_its_own(ctx, clinic_world, sqlite_only):
    commits = _count_commits(ctx)
    clinic_id = clinic_world.clinic.id
    outcomes = await asyncio.gather(*(_writer(ctx, clinic_id, n, fail=n == 7, leave=n == 12) for n in range(30)),
                                    return_exceptions=True)
    assert isinstance(outcomes[7], RuntimeError) and outcomes[12] == "left"
    assert outcomes.count("committed") == 28
    assert commits[0] < 10, f"30 queued writers took {commits[0]} commits: they were not grouped"
    kept = await _subjects(ctx, clinic_chain(clinic_id))
    assert kept == [f"writer:{n}" for n in range(30) if n not in (7, 12)], "each writer's row, in queue order"
    async with ctx.uow(read_only=True) as uow:
        name = (await uow.conn.execute(sa.select(t.clinics.c.name).where(t.clinics.c.id == clinic_id))).scalar_one()
    assert name == "renamed 29"


async def test_a_failed_group_commit_is_reported_to_every_writer_of_the_group(ctx, clinic_world, sqlite_only):
    clinic_id = clinic_world.clinic.id
    failures = [1]

    @event.listens_for(ctx.uow.engine.sync_engine, "commit")
    def _disk_fails_once(_conn):
        if failures[0]:
            failures[0] -= 1
            raise sa.exc.OperationalError("COMMIT", {}, Exception("disk I/O error"))

    outcomes = await asyncio.gather(*(_writer(ctx, clinic_id, n) for n in range(8)), return_exceptions=True)
    failed = [n for n, outcome in enumerate(outcomes) if isinstance(outcome, DatabaseUnavailable)]
    assert failed and all(outcomes[n] == "committed" for n in range(8) if n not in failed), outcomes
    kept = await _subjects(ctx, clinic_chain(clinic_id))
    assert kept == [f"writer:{n}" for n in range(8) if n not in failed], "no row of the failed group remains"
    assert await _writer(ctx, clinic_id, 99) == "committed"  # the next writer starts afresh


async def test_a_writer_reads_after_its_commit_through_a_reader_taken_only_when_it_reads(ctx, clinic_world,
                                                                                        sqlite_only):
    """After its commit a writer reads through a connection of its own (the group's is the next writer's), taken
    from the pool at its first statement; a writer that reads nothing afterwards takes none."""
    clinic_id = clinic_world.clinic.id
    checkouts = [0]

    @event.listens_for(ctx.uow.engine.sync_engine, "checkout")
    def _on_checkout(*_args):
        checkouts[0] += 1

    async def rename(name: str, *, read_after: bool) -> str | None:
        async with ctx.uow() as uow:
            await uow.conn.execute(sa.update(t.clinics).where(t.clinics.c.id == clinic_id).values(name=name))
            await uow.commit()
            if read_after:
                return (await uow.clinics.get(clinic_id)).name
        return None

    await rename("warm", read_after=False)  # the group's first writer's connection is in the pool now
    checkouts[0] = 0
    assert await rename("quiet", read_after=False) is None
    assert checkouts[0] == 1, "the group's connection only: no reader for a writer that reads nothing after"
    names = await asyncio.gather(*(rename(f"reader {n}", read_after=True) for n in range(5)))
    assert all(int(name.split()[1]) >= n for n, name in enumerate(names)), f"each sees its own or a later: {names}"
    async with ctx.uow(read_only=True) as uow:
        assert (await uow.clinics.get(clinic_id)).name == "reader 4"
