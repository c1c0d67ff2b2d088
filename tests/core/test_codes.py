"""One-time codes on both engines: single use, expiry, attempt caps exact under concurrency."""
import asyncio
import datetime as dt

import pytest
import sqlalchemy as sa

from core.audit import clinic_chain, find_break
from core.codes import CodeOutcome
from core.db import tables as t
from core.model import Actor, VerificationMethod, VisitMode, VisitState
from core.services import codes, visits
from tests.core.sqlite_trips import count_trips


async def _visit(ctx, world, mode=VisitMode.ONLINE, starts_in=dt.timedelta(minutes=10)):
    return await visits.register_visit(ctx, clinic_id=world.clinic.id, doctor_id=world.doctor.id,
                                       patient_id=world.p1.id, start=ctx.clock.now() + starts_in,
                                       duration=dt.timedelta(minutes=20), mode=mode, service_code="B03.001")


def _other(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def test_right_code_accepted_once_and_replay_refused(ctx, clinic_world):
    v = await _visit(ctx, clinic_world)
    issued = await codes.issue_code(ctx, v.id)
    assert len(issued.code) == 6 and issued.code.isdigit()
    first = await codes.verify_code(ctx, clinic_world.clinic.id, v.id, issued.code)
    assert first.outcome is CodeOutcome.VERIFIED
    replay = await codes.verify_code(ctx, clinic_world.clinic.id, v.id, issued.code)
    assert replay.outcome is CodeOutcome.ALREADY_USED
    view = await visits.get_visit(ctx, clinic_world.clinic.id, v.id)
    assert view.visit.state is VisitState.VERIFIED and view.visit.verified_by.value == "code"


async def test_expired_code_is_refused(ctx, clinic_world):
    v = await _visit(ctx, clinic_world)
    issued = await codes.issue_code(ctx, v.id)
    ctx.clock.set(issued.expires_at + dt.timedelta(seconds=1))
    assert (await codes.verify_code(ctx, clinic_world.clinic.id, v.id, issued.code)).outcome is CodeOutcome.EXPIRED


async def test_code_validity_window_follows_the_rule(ctx, clinic_world):
    v = await _visit(ctx, clinic_world, starts_in=dt.timedelta(minutes=10))
    issued = await codes.issue_code(ctx, v.id)
    # window ends at start + 20 min duration + 15 min grace, which is later than issued + 10 min
    assert issued.expires_at == v.start + dt.timedelta(minutes=35)
    too_early = await _visit(ctx, clinic_world, starts_in=dt.timedelta(minutes=16))
    assert await codes.issue_code(ctx, too_early.id) is None


async def test_sixth_attempt_refused_even_when_correct(ctx, clinic_world):
    v = await _visit(ctx, clinic_world)
    issued = await codes.issue_code(ctx, v.id)
    results = [await codes.verify_code(ctx, clinic_world.clinic.id, v.id, _other(issued.code)) for _ in range(5)]
    assert [r.outcome for r in results] == [CodeOutcome.WRONG] * 5
    assert [r.attempts_left for r in results] == [4, 3, 2, 1, 0]
    sixth = await codes.verify_code(ctx, clinic_world.clinic.id, v.id, issued.code)
    assert sixth.outcome is CodeOutcome.LOCKED
    assert (await visits.get_visit(ctx, clinic_world.clinic.id, v.id)).visit.state is VisitState.SCHEDULED


async def test_twenty_concurrent_wrong_attempts_count_exactly_twenty(ctx, clinic_world):
    v = await _visit(ctx, clinic_world)
    issued = await codes.issue_code(ctx, v.id)
    wrong = _other(issued.code)
    results = await asyncio.gather(*[codes.verify_code(ctx, clinic_world.clinic.id, v.id, wrong) for _ in range(20)])
    async with ctx.uow() as uow:
        assert await uow.visits.code_attempts(v.id) == 20
    outcomes = sorted(r.outcome.value for r in results)
    assert outcomes.count("wrong") == 5 and outcomes.count("locked") == 15


async def test_doctor_hourly_cap_stops_guessing_spread_over_visits(ctx, clinic_world, settings):
    cap = settings.doctor_code_failures_per_hour
    made = [await _visit(ctx, clinic_world) for _ in range(cap // 4 + 2)]
    for v in made:
        await codes.issue_code(ctx, v.id)
    outcomes = []
    for v in made:
        for _ in range(4):
            outcomes.append(await codes.verify_code(ctx, clinic_world.clinic.id, v.id, "000000"))
    wrong = [o for o in outcomes if o.outcome in (CodeOutcome.WRONG, CodeOutcome.NO_CODE)]
    capped = [o for o in outcomes if o.capped_by == "doctor"]
    assert len(wrong) <= cap and capped, "the doctor's hourly cap must stop further guesses"
    ctx.clock.advance(dt.timedelta(hours=1))
    fresh = await _visit(ctx, clinic_world)
    issued = await codes.issue_code(ctx, fresh.id)
    assert (await codes.verify_code(ctx, clinic_world.clinic.id, fresh.id, issued.code)).outcome is CodeOutcome.VERIFIED


async def test_reissue_invalidates_the_old_code(ctx, clinic_world):
    v = await _visit(ctx, clinic_world)
    old = await codes.issue_code(ctx, v.id)
    new = await codes.issue_code(ctx, v.id)
    if old.code != new.code:
        assert (await codes.verify_code(ctx, clinic_world.clinic.id, v.id, old.code)).outcome is CodeOutcome.WRONG
    assert (await codes.verify_code(ctx, clinic_world.clinic.id, v.id, new.code)).outcome is CodeOutcome.VERIFIED


async def test_code_cannot_be_recovered_from_database_contents(ctx, clinic_world, engine):
    v = await _visit(ctx, clinic_world)
    issued = await codes.issue_code(ctx, v.id)
    dump = []
    async with engine.connect() as conn:
        for table in t.metadata.sorted_tables:
            for row in (await conn.execute(sa.select(table))).all():
                dump.append(" ".join(str(x) for x in row))
    text = "\n".join(dump)
    assert issued.code not in text
    # a brute force over all 10^6 codes without the HMAC key finds nothing: the stored hash is keyed
    async with ctx.uow() as uow:
        row = await uow.codes.current(v.id)
    import hashlib
    assert all(hashlib.sha256(f"{v.id}:{row.generation}:{c:06d}".encode()).hexdigest() != row.code_hash
               for c in range(0, 1_000_000, 997))
    assert ctx.hasher.digest(v.id, row.generation, issued.code) == row.code_hash


async def test_code_request_is_queued_and_never_returned(ctx, clinic_world):
    v = await _visit(ctx, clinic_world)
    async with ctx.uow() as uow:
        await uow.patients.set_chat(clinic_world.p1.phone, 7001)
        await uow.commit()
    request = await codes.request_code(ctx, clinic_world.clinic.id, v.id)
    assert request.channel == "telegram" and not hasattr(request, "code")
    async with ctx.uow() as uow:
        queued = await uow.outbox.pending(visit_id=v.id, kind="visit_code")
    assert request.message_id in [m.id for m in queued]
    assert all(len(m.payload) < 40 and not any(ch.isdigit() for ch in m.payload) for m in queued)


async def test_non_digit_code_is_a_clear_error(ctx, clinic_world):
    v = await _visit(ctx, clinic_world)
    with pytest.raises(Exception, match="6 digits"):
        await codes.verify_code(ctx, clinic_world.clinic.id, v.id, "12a456")


async def test_verification_audited_in_its_clinic_chain_even_as_the_chains_first_row(ctx, clinic_world):
    """A verification by code appends its audit row with the state change (PostgreSQL: in the same statement) right
    after the chain's head; a chain with no head yet gets its first row all the same, and the chain verifies."""
    from core.audit import clinic_chain, find_break

    chain = clinic_chain(clinic_world.clinic.id)

    async def verify_and_read_chain(*, chain_restarted: bool):
        v = await _visit(ctx, clinic_world)
        issued = await codes.issue_code(ctx, v.id)
        if chain_restarted:  # the clinic's chain starts afresh: no head, no row
            async with ctx.uow() as uow:
                await uow.conn.execute(sa.delete(t.audit_log).where(t.audit_log.c.chain == chain))
                await uow.conn.execute(sa.delete(t.audit_head).where(t.audit_head.c.chain == chain))
                await uow.commit()
        assert (await codes.verify_code(ctx, clinic_world.clinic.id, v.id, issued.code)).outcome is CodeOutcome.VERIFIED
        async with ctx.uow(read_only=True) as uow:
            records = await uow.audit.records(chain)
            heads = {head.chain: head for head in await uow.audit.heads()}
        assert find_break(chain, records, heads.get(chain)) is None
        return v, records

    v, records = await verify_and_read_chain(chain_restarted=False)
    assert (records[-1].action, records[-1].subject) == ("visit.verify", f"visit:{v.id}")
    assert records[-2].action == "visit.code_issued"
    v, records = await verify_and_read_chain(chain_restarted=True)
    assert [(r.seq, r.action, r.subject) for r in records] == [(1, "visit.verify", f"visit:{v.id}")]


async def test_a_code_check_on_sqlite_hands_only_its_begin_and_commit_to_the_drivers_thread(ctx, clinic_world,
                                                                                           monkeypatch):
    """The check's statements (count, code used, state, event, audit row, chain head, savepoints) are point writes
    run under the write lock on the event loop's thread (core.db.sqlite_driver.POINT_WRITE); a trip to aiosqlite's
    thread each cost the server more CPU than SQLite's work. What takes or waits for the lock still goes there."""
    if ctx.uow.engine.dialect.name != "sqlite":
        pytest.skip("aiosqlite's thread is SQLite's")
    v = await _visit(ctx, clinic_world)
    issued = await codes.issue_code(ctx, v.id)
    trips = count_trips(monkeypatch)
    check = await codes.verify_code(ctx, clinic_world.clinic.id, v.id, issued.code)
    assert check.outcome is CodeOutcome.VERIFIED
    assert trips == ["<lambda>", "commit"], f"BEGIN IMMEDIATE and COMMIT only: {trips}"
    monkeypatch.undo()
    async with ctx.uow(read_only=True) as uow:
        assert [e.step for e in await uow.visits.events(v.id)][-1] == "verify"
        records = await uow.audit.records(clinic_chain(clinic_world.clinic.id))
        heads = {head.chain: head for head in await uow.audit.heads()}
    assert records[-1].subject == f"visit:{v.id}" and records[-1].action == "visit.verify"
    assert find_break(clinic_chain(clinic_world.clinic.id), records,
                      heads[clinic_chain(clinic_world.clinic.id)]) is None


async def _while_another_holds_the_visit(ctx, visit_id: int, change, check):
    """Run ``check`` while another transaction, holding the visit's row lock as issue_code does, makes ``change``:
    the check's count starts (and so takes its snapshot), waits for that lock, and the change commits under it."""
    async with ctx.uow() as holder:
        visit = await holder.visits.get(visit_id, lock=True)
        await change(holder, visit)
        holder_pid = (await holder.conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
        checking = asyncio.create_task(check())
        async with ctx.uow.engine.connect() as watcher:
            for _ in range(500):
                waiting = (await watcher.execute(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
                    {"pid": holder_pid})).scalar_one()
                await watcher.rollback()
                if waiting or checking.done():
                    break
                await asyncio.sleep(0.01)
        assert waiting and not checking.done(), "the check must be waiting for the visit's row lock"
        await holder.commit()
    return await checking


async def _put_code(ctx, uow, visit_id: int, code: str) -> None:
    """A new code for the visit, as issue_code stores one (its caller holds the visit's row lock)."""
    generation = await uow.codes.next_generation(visit_id)
    now = ctx.clock.now()
    await uow.codes.put(visit_id, generation, ctx.hasher.digest(visit_id, generation, code), now,
                        now + dt.timedelta(minutes=30))


@pytest.mark.parametrize("code_before", [True, False], ids=["replaced", "first"])
async def test_a_check_waiting_while_a_new_code_is_issued_compares_the_new_code(ctx, clinic_world, code_before):
    """PostgreSQL: the check counts its attempt and reads the code in one statement, whose reads see the database as
    it stood before the statement waited for the visit's lock. A code issued meanwhile must still be the one
    compared: the replaced code is WRONG (a clinic holding an old code cannot get it accepted by racing a resend),
    and a first code issued while the check waited is compared, not missed as NO_CODE."""
    if ctx.uow.engine.dialect.name != "postgresql":
        pytest.skip("SQLite's writer holds the whole database from BEGIN IMMEDIATE: nothing changes under a check")
    v = await _visit(ctx, clinic_world)
    old = (await codes.issue_code(ctx, v.id)).code if code_before else None
    new = _other(old) if old else "246810"

    async def issue_new(uow, _visit):
        await _put_code(ctx, uow, v.id, new)

    checked = old or new
    check = await _while_another_holds_the_visit(
        ctx, v.id, issue_new, lambda: codes.verify_code(ctx, clinic_world.clinic.id, v.id, checked))
    if code_before:
        assert check.outcome is CodeOutcome.WRONG, "the replaced code must not verify"
        assert (await codes.verify_code(ctx, clinic_world.clinic.id, v.id, new)).outcome is CodeOutcome.VERIFIED
    else:
        assert check.outcome is CodeOutcome.VERIFIED
    assert (await visits.get_visit(ctx, clinic_world.clinic.id, v.id)).visit.state is VisitState.VERIFIED


async def test_a_check_waiting_while_another_check_uses_the_code_answers_already_used(ctx, clinic_world):
    """PostgreSQL: a check that waited for the lock of a check verifying with the same code sees the code used."""
    if ctx.uow.engine.dialect.name != "postgresql":
        pytest.skip("SQLite's writer holds the whole database from BEGIN IMMEDIATE: nothing changes under a check")
    v = await _visit(ctx, clinic_world)
    issued = await codes.issue_code(ctx, v.id)

    async def verify(uow, visit):
        now = ctx.clock.now()
        visit.verify(VerificationMethod.CODE, Actor.DOCTOR, now)
        await uow.visits.save(visit, code_used_at=now)

    check = await _while_another_holds_the_visit(
        ctx, v.id, verify, lambda: codes.verify_code(ctx, clinic_world.clinic.id, v.id, issued.code))
    assert check.outcome is CodeOutcome.ALREADY_USED


async def test_a_code_check_on_postgresql_counts_and_reads_in_one_round_trip(ctx, clinic_world):
    """A verified check's round trips to PostgreSQL: BEGIN, the count with the code and the hour's wrong codes in
    its RETURNING, the state with its event, the code's use and the audit row, COMMIT. The server's CPU goes per
    round trip; the code was read in a statement of its own before."""
    if ctx.uow.engine.dialect.name != "postgresql":
        pytest.skip("SQLite's trips are counted by the test above")
    v = await _visit(ctx, clinic_world)
    issued = await codes.issue_code(ctx, v.id)
    trips: list[str] = []

    def statement(_conn, _cursor, sql, *_args):
        trips.append(" ".join(sql.split()[:2]))

    engine = ctx.uow.engine.sync_engine
    listeners = {"before_cursor_execute": statement, "begin": lambda _conn: trips.append("BEGIN"),
                 "commit": lambda _conn: trips.append("COMMIT")}
    for name, listener in listeners.items():
        sa.event.listen(engine, name, listener)
    try:
        check = await codes.verify_code(ctx, clinic_world.clinic.id, v.id, issued.code)
    finally:
        for name, listener in listeners.items():
            sa.event.remove(engine, name, listener)
    assert check.outcome is CodeOutcome.VERIFIED
    assert trips == ["BEGIN", "UPDATE visits", "WITH event", "COMMIT"], trips
