"""Time, injectable: production reads the system clock, tests and the demo move a controllable one."""
from __future__ import annotations

import datetime as dt
import time
from typing import Protocol
from zoneinfo import ZoneInfo

ALMATY = ZoneInfo("Asia/Almaty")  # UTC+5 everywhere in Kazakhstan since 2024-03-01 (tzdata ships with us)


class Clock(Protocol):
    def now(self) -> dt.datetime: ...


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


class ShiftedClock:
    """The system clock plus a fixed offset: real-speed time placed where a test's schedule needs it, the same
    in every process handed the same offset."""

    def __init__(self, offset_seconds: float):
        self.offset = offset_seconds

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(time.time() + self.offset, dt.UTC)


class ManualClock:
    """A clock that only moves when told to."""

    def __init__(self, start: dt.datetime):
        self._now = start.astimezone(dt.UTC)

    def now(self) -> dt.datetime:
        return self._now

    def advance(self, delta: dt.timedelta) -> dt.datetime:
        self._now += delta
        return self._now

    def set(self, moment: dt.datetime) -> None:
        self._now = moment.astimezone(dt.UTC)


def local_day_bounds(day: dt.date, tz: ZoneInfo = ALMATY) -> tuple[dt.datetime, dt.datetime]:
    """UTC start (inclusive) and end (exclusive) of a calendar day in ``tz``."""
    start = dt.datetime.combine(day, dt.time(0), tzinfo=tz)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=tz)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


def to_local(moment: dt.datetime, tz: ZoneInfo = ALMATY) -> dt.datetime:
    return moment.astimezone(tz)


def hour_start(moment: dt.datetime) -> dt.datetime:
    """The clock hour a moment falls in: what hourly caps count per."""
    return moment.replace(minute=0, second=0, microsecond=0)


def seconds_to_next_hour(moment: dt.datetime) -> int:
    """Retry-After for an hourly cap: until the turn of the hour (rounded up)."""
    return int((hour_start(moment) + dt.timedelta(hours=1) - moment).total_seconds()) + 1
