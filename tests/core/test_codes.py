"""One-time codes on both engines: single use, expiry, attempt caps exact under concurrency."""
import asyncio
import datetime as dt

import pytest
import sqlalchemy as sa

from core.audit import clinic_chain, find_break
from core.codes import CodeOutcome
from core.db import tables as t
from core.model import VisitMode, VisitState
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
