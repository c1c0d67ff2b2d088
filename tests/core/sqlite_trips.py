"""Counting the hand-offs to aiosqlite's thread, for tests of where SQLite statements run (core.db.sqlite_driver)."""
from __future__ import annotations

from core.db.sqlite_driver import OneTripConnection


def count_trips(monkeypatch) -> list[str]:
    """Every hand-off to a OneTripConnection's thread from now on (statements, commits and rollbacks alike)."""
    trips: list[str] = []
    real = OneTripConnection._execute

    async def counted(self, fn, *args, **kwargs):
        trips.append(getattr(fn, "__name__", repr(fn)))
        return await real(self, fn, *args, **kwargs)

    monkeypatch.setattr(OneTripConnection, "_execute", counted)
    return trips
