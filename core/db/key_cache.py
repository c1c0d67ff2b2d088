"""The server process's copy of its clinics' API key rows on PostgreSQL, so a request's key costs no round trip.

The database announces every change to a key (migration 0015: a trigger calls ``pg_notify`` with the key's prefix
on any insert, update or delete, except an update of ``last_used_at`` alone). One dedicated connection per process
LISTENs; each notification drops that key's row. Rows are kept only while that connection is known to be
listening, i.e. it hears a notification it sends itself (at start, then every PROBE_EVERY_S): when it is lost
(closed, terminated, or its probe unheard) everything is dropped and every lookup reads the database until LISTEN
is back and probed, and then everything is dropped again, since notifications in the gap are lost.
A row read from the database is kept only when no notification arrived since before it was read
(:meth:`KeyCache.token`), so a change that raced the read cannot leave the older row behind. Each row is also
forgotten after ENTRY_LIFETIME_S, a backstop for a failure nobody saw. SQLite has no notifications (and its lookup
is cheap): no cache there.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # the driver's own API: LISTEN and a termination callback
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db.repositories import StoredApiKey
from core.logs import get_logger

CHANNEL = "rastau_api_keys"  # as migration 0015's trigger names it
DROP_ALL = "*"  # the trigger's payload after a TRUNCATE
ENTRY_LIFETIME_S = 60.0
PROBE = "probe "  # a listener's notification to itself, proving the channel delivers: it invalidates nothing
PROBE_EVERY_S = 10.0  # a dead network path closes no socket, and a transaction-mode pooler delivers nothing
PROBE_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 10.0
BACKOFF_S = (0.2, 30.0)  # the first retry after a loss, and the most between retries (doubling)
log = get_logger("rastau.key_cache")


class KeyCache:
    """Clinic key rows by prefix, for as long as notifications are known to reach this process."""

    def __init__(self, engine: AsyncEngine):
        _args, self._connect_args = engine.dialect.create_connect_args(engine.url)
        self._rows: dict[str, tuple[StoredApiKey, float]] = {}
        self._listening = False
        self._generation = 0  # moves on every notification and on every change of listening
        self._probe: tuple[str, asyncio.Future[None]] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        return self._listening

    def get(self, prefix: str) -> StoredApiKey | None:
        """The kept row, or None: read the database (taking :meth:`token` first)."""
        if not self._listening:
            return None
        kept = self._rows.get(prefix)
        if kept is None:
            return None
        if time.monotonic() - kept[1] >= ENTRY_LIFETIME_S:
            del self._rows[prefix]
            return None
        return kept[0]

    def token(self) -> int:
        """Taken before reading a row from the database, handed back to :meth:`put`."""
        return self._generation

    def put(self, row: StoredApiKey, token: int) -> None:
        """Keep a live clinic key's row, unless a notification arrived (or listening changed) since ``token``.
        Auditors' keys are not kept: their lookup reads the auditor from the database anyway."""
        if (self._listening and token == self._generation and row.clinic_id is not None
                and row.revoked_at is None):
            self._rows[row.key_prefix] = (row, time.monotonic())

    def used(self, prefix: str, at: dt.datetime) -> None:
        """The key's use at ``at`` was recorded (or found recorded): the kept row says so, keeping its age."""
        kept = self._rows.get(prefix)
        if kept is not None:
            self._rows[prefix] = (dataclasses.replace(kept[0], last_used_at=at), kept[1])

    def _drop(self, prefix: str = DROP_ALL) -> None:
        self._generation += 1
        if prefix == DROP_ALL:
            self._rows.clear()
        else:
            self._rows.pop(prefix, None)

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if not payload.startswith(PROBE):
            self._drop(payload)
        elif self._probe is not None and self._probe[0] == payload and not self._probe[1].done():
            self._probe[1].set_result(None)

    async def _probe_channel(self, conn: Any) -> None:
        """Notify ourselves and hear it within PROBE_TIMEOUT_S (TimeoutError otherwise)."""
        payload = f"{PROBE}{secrets.token_hex(8)}"
        self._probe = (payload, asyncio.get_running_loop().create_future())
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
            await self._probe[1]

    def _stop_serving(self) -> None:
        """Nothing is served from memory until LISTEN is back."""
        self._listening = False
        self._drop()

    async def _listen_once(self) -> None:
        """Connect, LISTEN, hear a probe, and serve from memory until the connection is lost (asyncpg's
        termination callback says so at once; a probe not heard, for a path that died silently) or the task is
        cancelled."""
        lost = asyncio.Event()

        def on_loss(_conn: Any) -> None:
            if not lost.is_set():  # a late callback of an earlier connection changes nothing
                lost.set()
                self._stop_serving()

        conn = await asyncpg.connect(**self._connect_args, timeout=CONNECT_TIMEOUT_S,
                                     server_settings={"application_name": f"rastau key cache {os.getpid()}"})
        try:
            conn.add_termination_listener(on_loss)
            await conn.add_listener(CHANNEL, self._notified)
            await self._probe_channel(conn)
            # a change committed before LISTEN took effect was announced to nobody: what lookups read until now (the
            # generation moves, so none of it is kept) or kept before the loss is stale
            self._drop()
            self._listening = True
            log.info("api key cache listening: clinic keys are read from memory")
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), PROBE_EVERY_S)
                    break
                await self._probe_channel(conn)
        finally:
            on_loss(conn)
            conn.terminate()

    async def _run(self) -> None:
        delay = BACKOFF_S[0]
        while True:
            started = time.monotonic()
            try:
                await self._listen_once()
                error = "connection lost"
            except Exception as exc:  # noqa: BLE001 - it outlives any failure: without it every lookup reads the database
                error = type(exc).__name__
            if time.monotonic() - started > BACKOFF_S[1]:  # it listened a while: this is a new failure
                delay = BACKOFF_S[0]
            log.warning("api key cache not listening: every key is read from the database until it is back",
                        error_type=error, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, BACKOFF_S[1])

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._stop_serving()


@contextlib.asynccontextmanager
async def key_cache(engine: AsyncEngine) -> AsyncIterator[KeyCache | None]:
    """A listening key cache for a PostgreSQL engine for the block's duration (it starts reading from memory once
    LISTEN is established); None on SQLite."""
    if engine.dialect.name == "sqlite":
        yield None
        return
    cache = KeyCache(engine)
    cache.start()
    try:
        yield cache
    finally:
        await cache.close()
