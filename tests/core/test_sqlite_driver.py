"""The SQLite driver makes one trip to aiosqlite's thread per statement, and what it answers is what sqlite3 does:
rows, row counts, inserted ids, errors."""
import sqlalchemy as sa

from core.db.engine import create_engine
from core.db.sqlite_driver import OneTripConnection


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
