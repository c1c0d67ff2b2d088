"""The SQLite driver makes one trip to aiosqlite's thread per statement, and what it answers is what sqlite3 does:
rows, row counts, inserted ids, errors."""
import asyncio

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from core.db import tables as t
from core.db.engine import READ_ONLY_OPTION, create_engine
from core.db.sqlite_driver import POINT_WRITE, OneTripConnection
from core.db.uow import UnitOfWorkFactory
from tests.conftest import T0, migrate_from_template
from tests.core.sqlite_trips import count_trips


async def test_one_trip_per_statement_with_rows_counts_and_errors(tmp_path, monkeypatch):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    trips = []
    real = OneTripConnection.in_thread

    async def counted(self, fn, *args):
        trips.append(args[0])
        return await real(self, fn, *args)

    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT UNIQUE)"))
            await conn.commit()
            monkeypatch.setattr(OneTripConnection, "in_thread", counted)
            inserted = await conn.execute(sa.text("INSERT INTO things (name) VALUES ('a'), ('b'), ('c')"))
            assert inserted.rowcount == 3
            last = await conn.execute(sa.text("INSERT INTO things (name) VALUES ('d')"))
            assert last.lastrowid == 4
            await conn.execute(sa.text("INSERT INTO things (name) VALUES (:name)"), [{"name": "e"}, {"name": "f"}])
            updated = await conn.execute(sa.text("UPDATE things SET name = name || '!' WHERE id > 4 RETURNING id"))
            assert sorted(updated.scalars()) == [5, 6]
            rows = (await conn.execute(sa.text("SELECT id, name FROM things ORDER BY id"))).all()
            assert [tuple(r) for r in rows] == [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e!"), (6, "f!")]
            assert len(trips) == 6, "one trip to the thread for each statement: BEGIN IMMEDIATE and five"
            try:
                await conn.execute(sa.text("INSERT INTO things (name) VALUES ('a')"))
            except sa.exc.IntegrityError:
                pass
            else:
                raise AssertionError("a duplicate name must be refused")
            assert (await conn.execute(sa.text("SELECT count(*) FROM things"))).scalar_one() == 6
            await conn.commit()
    finally:
        await engine.dispose()


async def _migrated(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'uow.db'}"
    await migrate_from_template(url)
    return create_engine(url)


async def _clinic_named(uow, clinic_id: int) -> str:
    return (await uow.conn.execute(sa.select(t.clinics.c.name).where(t.clinics.c.id == clinic_id))).scalar_one()


async def test_a_unit_reading_in_one_statement_makes_one_trip_and_sees_each_commit(tmp_path, monkeypatch):
    """A read-only unit without one snapshot (the API key's lookup on every request) begins no transaction: its
    statement is one trip, leaving costs none, and each statement reads the database as it stands. A unit that
    reads one snapshot still begins a read transaction and keeps seeing it."""
    engine = await _migrated(tmp_path)
    uows = UnitOfWorkFactory(engine)
    try:
        async with uows() as uow:
            await uow.conn.execute(sa.insert(t.clinics).values(id=1, name="before", created_at=T0))
            await uow.commit()
        trips = count_trips(monkeypatch)
        async with uows(read_only=True, snapshot=False) as uow:
            assert await _clinic_named(uow, 1) == "before"
            assert len(trips) == 1, f"one trip for one statement, no BEGIN before it: {trips}"
            async with uows() as writer:
                await writer.conn.execute(sa.update(t.clinics).values(name="after"))
                await writer.commit()
            assert await _clinic_named(uow, 1) == "after", "each statement reads what was committed before it"
        async with uows(read_only=True) as uow:  # one snapshot: what it read first, it reads again
            assert await _clinic_named(uow, 1) == "after"
            async with uows() as writer:
                await writer.conn.execute(sa.update(t.clinics).values(name="later"))
                await writer.commit()
            assert await _clinic_named(uow, 1) == "after", "a snapshot unit sees its snapshot"
        trips.clear()
        async with uows(read_only=True, snapshot=False) as uow:
            assert await _clinic_named(uow, 1) == "later"
        assert len(trips) == 1, f"leaving a unit that began nothing rolls nothing back: {trips}"
        with pytest.raises(ValueError):
            uows(snapshot=False)  # a writer's statements always share its transaction
    finally:
        await engine.dispose()


async def test_requests_in_flight_reuse_pooled_connections(tmp_path):
    """Twelve units at once, twice over, open no connection the first round did not: each SQLite connection is a
    thread and a file, and SQLAlchemy's default pool (5) opened and closed the rest on every request."""
    engine = await _migrated(tmp_path)
    opened = []
    event.listen(engine.sync_engine, "connect", lambda *_: opened.append(1))
    uows = UnitOfWorkFactory(engine)

    async def reader(inside: list[int], all_in: asyncio.Event, held: asyncio.Event) -> None:
        async with uows(read_only=True, snapshot=False) as uow:
            await uow.conn.execute(sa.select(t.clinics.c.id))
            inside.append(1)
            if len(inside) == 12:
                all_in.set()
            await held.wait()

    try:
        for _ in range(2):
            inside: list[int] = []
            all_in, held = asyncio.Event(), asyncio.Event()
            tasks = [asyncio.create_task(reader(inside, all_in, held)) for _ in range(12)]
            await asyncio.wait_for(all_in.wait(), 30)
            held.set()
            await asyncio.gather(*tasks)
        assert len(opened) == 12, f"{len(opened)} connections opened for 12 at a time"
    finally:
        await engine.dispose()


async def test_point_writes_run_on_the_loop_only_while_the_write_lock_is_held(tmp_path, monkeypatch):
    """A statement marked POINT_WRITE runs without a trip to the thread only inside a transaction its connection
    opened with BEGIN IMMEDIATE (which, like COMMIT, still goes to the thread); outside one, or unmarked, it goes to
    the thread. Whichever thread ran them, statements keep their transaction's atomicity and their errors."""
    engine = await _migrated(tmp_path)
    uows = UnitOfWorkFactory(engine)
    add = sa.insert(t.clinics).execution_options(**{POINT_WRITE: True})
    names = sa.select(t.clinics.c.name).order_by(t.clinics.c.id)
    try:
        async with uows(read_only=True) as uow:  # the connection made, so its set-up's trips are not counted below
            await uow.conn.execute(names)
        trips = count_trips(monkeypatch)
        async with uows() as uow:
            await uow.conn.execute(add, {"id": 1, "name": "one", "created_at": T0})
            await uow.conn.execute(add, {"id": 2, "name": "two", "created_at": T0})
            assert len(trips) == 1, f"BEGIN IMMEDIATE only: the marked inserts made no trip: {trips}"
            await uow.conn.execute(sa.update(t.clinics).where(t.clinics.c.id == 2).values(name="TWO"))
            assert len(trips) == 2, "an unmarked statement goes to the thread"
            await uow.commit()
        assert trips[-1] == "commit", "COMMIT (and its fsync) in the thread"
        trips.clear()
        async with uows() as uow:
            await uow.conn.execute(add, {"id": 3, "name": "three", "created_at": T0})
            with pytest.raises(sa.exc.IntegrityError):
                await uow.conn.execute(add, {"id": 1, "name": "again", "created_at": T0})
        assert trips == ["<lambda>", "rollback"], f"BEGIN IMMEDIATE, then the failed unit's ROLLBACK: {trips}"
        async with uows(read_only=True, snapshot=False) as uow:
            assert list((await uow.conn.execute(names)).scalars()) == ["one", "TWO"], "the failed unit left nothing"
        trips.clear()
        async with engine.connect() as conn:  # a deferred transaction holds no write lock: to the thread
            await conn.execution_options(**{READ_ONLY_OPTION: True})
            await conn.execute(add, {"id": 4, "name": "four", "created_at": T0})
            await conn.commit()
        assert len(trips) == 3, f"BEGIN, the marked insert and COMMIT, each a trip: {trips}"
    finally:
        await engine.dispose()
