"""The server's API key cache on PostgreSQL (core.db.key_cache): a key changed by another process is refused once
the database's notification arrives, a lost listener stops the cache at once, a change racing a lookup leaves
nothing stale behind, and a warm lookup costs no statement. Real PostgreSQL, real notifications."""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from typing import Any

import pytest
from sqlalchemy import event, text

from core.db.engine import create_engine
from core.db.key_cache import KeyCache
from core.db.repositories import ApiKeyRepo
from core.db.uow import UnitOfWorkFactory
from core.services import Context, api_keys
from tests.polling import until

on_postgres = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)


class HeardCache(KeyCache):
    """The real cache, also noting each prefix it was notified of once it has acted on it: a test waits for its
    own change's notification, not for any (other tests' schemas share the channel)."""

    def __init__(self, engine: Any):
        super().__init__(engine)
        self.heard: list[str] = []

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        super()._notified(conn, pid, channel, payload)
        self.heard.append(payload)

    async def heard_again(self, *prefixes: str, after: list[str]) -> None:
        """Wait until each prefix was heard once more than in ``after`` (a copy of ``heard`` taken earlier)."""
        await until(lambda: all(self.heard.count(p) > after.count(p) for p in prefixes), within=2.0)


@pytest.fixture
async def cache(engine):
    keys = HeardCache(engine)
    keys.start()
    await until(lambda: keys.listening, within=5.0)
    yield keys
    await keys.close()


@pytest.fixture
def cached(ctx, cache) -> Context:
    """The server process's context: its cache beside its engine."""
    return dataclasses.replace(ctx, key_cache=cache)


@pytest.fixture
async def other(db_url, settings, clock):
    """Another process on the same database (the CLI, another server process): its own engine, no cache."""
    engine = create_engine(db_url)
    yield Context.build(settings, UnitOfWorkFactory(engine), clock)
    await engine.dispose()


async def _sql(ctx: Context, statement: str, **params: Any) -> Any:
    async with ctx.uow.engine.begin() as conn:
        result = await conn.execute(text(statement), params)
        return result.all() if result.returns_rows else None


async def _warm(ctx: Context, *keys: str) -> list[str]:
    """Use new keys once their creation was heard, until each is kept (a notification arriving between a read and
    its keeping, of any key, other tests' too, keeps nothing); their prefixes."""
    cache = ctx.key_cache
    prefixes = [api_keys.split_key(k) for k in keys]
    assert isinstance(cache, HeardCache)
    await until(lambda: all(p in cache.heard for p in prefixes), within=2.0)
    deadline = time.monotonic() + 2.0
    for key, prefix in zip(keys, prefixes, strict=True):
        while cache.get(prefix) is None:
            assert time.monotonic() < deadline, "a key's row was never kept"
            assert await api_keys.authenticate(ctx, key) is not None
    return prefixes


@on_postgres
async def test_a_key_revoked_by_another_process_is_refused_once_its_notification_arrives(
        cached, cache, other, clinic_world):
    key = (await api_keys.create_api_key(cached, clinic_world.clinic.id, ["webcam"])).key
    [prefix] = await _warm(cached, key)

    before = list(cache.heard)
    await api_keys.revoke_api_key(other, prefix)
    await cache.heard_again(prefix, after=before)
    assert await api_keys.authenticate(cached, key) is None


@on_postgres
async def test_expiry_scopes_and_removal_by_sql_hold_once_notified(cached, cache, other, clinic_world):
    clinic = clinic_world.clinic.id
    expiring, narrowed, removed = [(await api_keys.create_api_key(cached, clinic, ["webcam", "admin"])).key
                                   for _ in range(3)]
    prefixes = await _warm(cached, expiring, narrowed, removed)

    before = list(cache.heard)
    past = cached.clock.now() - dt.timedelta(minutes=1)
    await _sql(other, "UPDATE api_keys SET expires_at = :at WHERE key_prefix = :p", at=past, p=prefixes[0])
    await _sql(other, "UPDATE api_keys SET scopes = 'webcam' WHERE key_prefix = :p", p=prefixes[1])
    await _sql(other, "DELETE FROM api_keys WHERE key_prefix = :p", p=prefixes[2])
    await cache.heard_again(*prefixes, after=before)

    with pytest.raises(api_keys.ApiKeyExpired):
        await api_keys.authenticate(cached, expiring)
    principal = await api_keys.authenticate(cached, narrowed)
    assert principal is not None and {s.value for s in principal.scopes} == {"webcam"}
    assert await api_keys.authenticate(cached, removed) is None


@on_postgres
async def test_a_kept_key_expires_by_the_clock_and_its_hash_is_still_compared(cached, clinic_world):
    key = (await api_keys.create_api_key(cached, clinic_world.clinic.id, ["webcam"],
                                         expires_in=dt.timedelta(hours=1))).key
    await _warm(cached, key)
    assert await api_keys.authenticate(cached, key[:-1] + ("A" if key[-1] != "A" else "B")) is None  # wrong secret

    cached.clock.advance(dt.timedelta(hours=1))
    with pytest.raises(api_keys.ApiKeyExpired):
        await api_keys.authenticate(cached, key)


@on_postgres
async def test_a_killed_listener_stops_the_cache_at_once_and_it_resumes_after_reconnecting(
        cached, cache, other, clinic_world):
    clinic = clinic_world.clinic.id
    revoked = (await api_keys.create_api_key(cached, clinic, ["webcam"])).key
    await _warm(cached, revoked)

    await _kill_listener(other)
    await api_keys.revoke_api_key(other, api_keys.split_key(revoked))  # no listener: nobody hears of it
    assert await api_keys.authenticate(cached, revoked) is None

    await until(lambda: cache.listening, within=5.0)
    await _warm(cached, (await api_keys.create_api_key(cached, clinic, ["webcam"])).key)
    assert await api_keys.authenticate(cached, revoked) is None


@on_postgres
async def test_a_change_notified_between_the_read_and_the_keeping_leaves_nothing_kept(
        cached, cache, other, clinic_world, monkeypatch):
    key = (await api_keys.create_api_key(cached, clinic_world.clinic.id, ["webcam"])).key
    prefix = api_keys.split_key(key)
    await until(lambda: prefix in cache.heard, within=2.0)  # its creation's notification, out of the way
    read = ApiKeyRepo.by_prefix
    revoking = []

    async def read_then_revoked_elsewhere(self, key_prefix):
        row = await read(self, key_prefix)
        if key_prefix == prefix and not revoking:  # the server's read: the other process revokes, and is heard
            revoking.append(True)
            before = list(cache.heard)
            await api_keys.revoke_api_key(other, prefix)
            await cache.heard_again(prefix, after=before)
        return row

    monkeypatch.setattr(ApiKeyRepo, "by_prefix", read_then_revoked_elsewhere)
    assert await api_keys.authenticate(cached, key) is not None  # read before the revocation: let in, not kept
    assert cache.get(prefix) is None
    assert await api_keys.authenticate(cached, key) is None


async def _kill_listener(other: Context) -> None:
    [[killed]] = await _sql(other, "SELECT count(pg_terminate_backend(pid, 2000)) FROM pg_stat_activity "
                                   "WHERE application_name = :name", name=f"rastau key cache {os.getpid()}")
    assert killed == 1


@on_postgres
async def test_a_row_read_while_the_listener_was_down_is_not_kept_once_it_listens_again(
        cached, cache, other, clinic_world, monkeypatch):
    key = (await api_keys.create_api_key(cached, clinic_world.clinic.id, ["webcam"])).key
    prefix = api_keys.split_key(key)
    await until(lambda: prefix in cache.heard, within=2.0)
    read = ApiKeyRepo.by_prefix
    revoking = []

    async def read_revoked_unheard_then_listening(self, key_prefix):
        row = await read(self, key_prefix)
        if key_prefix == prefix and not revoking:  # read in the gap; revoked in the gap; kept only after it
            revoking.append(True)
            await api_keys.revoke_api_key(other, prefix)
            await until(lambda: cache.listening, within=5.0)
        return row

    await _kill_listener(other)
    await until(lambda: not cache.listening, within=2.0)
    monkeypatch.setattr(ApiKeyRepo, "by_prefix", read_revoked_unheard_then_listening)
    assert await api_keys.authenticate(cached, key) is not None
    assert await api_keys.authenticate(cached, key) is None


def _count_statements(engine) -> list[str]:
    statements: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_rest: statements.append(statement))
    return statements


@on_postgres
async def test_a_warm_lookup_makes_no_statement_and_recording_a_use_notifies_nobody(
        cached, cache, engine, clinic_world):
    clinic = clinic_world.clinic.id
    key = (await api_keys.create_api_key(cached, clinic, ["webcam"])).key
    [prefix] = await _warm(cached, key)
    statements = _count_statements(engine)
    assert await api_keys.authenticate(cached, key) is not None
    assert statements == []

    cached.clock.advance(api_keys.USE_RECORDED_EVERY * 2)
    assert await api_keys.authenticate(cached, key) is not None  # records the use: one UPDATE of last_used_at
    assert len([s for s in statements if s.startswith("UPDATE api_keys")]) == 1
    heard = cache.heard.count(prefix)
    marker = (await api_keys.create_api_key(cached, clinic, ["webcam"])).key  # notified after the use's UPDATE
    await until(lambda: api_keys.split_key(marker) in cache.heard, within=2.0)
    assert cache.heard.count(prefix) == heard and cache.get(prefix) is not None
    statements.clear()
    assert await api_keys.authenticate(cached, key) is not None
    assert statements == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_on_sqlite_every_lookup_reads_the_key(ctx, engine, clinic_world):
    key = (await api_keys.create_api_key(ctx, clinic_world.clinic.id, ["webcam"])).key
    assert await api_keys.authenticate(ctx, key) is not None
    statements = _count_statements(engine)
    assert await api_keys.authenticate(ctx, key) is not None
    assert len(statements) == 1
