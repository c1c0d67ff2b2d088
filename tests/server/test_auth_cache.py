"""The server on PostgreSQL keeps its clinic keys in memory (core.db.key_cache, wired in server.app): a key used
twice is read once, and a key revoked by the operator's CLI (another process) answers 401 once the database's
notification reaches the server."""
from __future__ import annotations

import time

import pytest

from core.services import api_keys
from server.app import create_app
from server.appkeys import CTX
from tests.polling import until
from tests.server.support import FakeAnalyser

API = "/api/v1"


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_the_server_keeps_a_key_and_refuses_it_once_revoked_elsewhere(aiohttp_client, engine, settings, ctx,
                                                                             clinic_world):
    client = await aiohttp_client(create_app(settings, face_pool=FakeAnalyser()))  # its own engine and cache
    cache = client.app[CTX].key_cache
    assert cache is not None
    await until(lambda: cache.listening, within=5.0)
    key = (await api_keys.create_api_key(ctx, clinic_world.clinic.id, ["clinic_system"])).key
    prefix = api_keys.split_key(key)
    headers = {"Authorization": f"Bearer {key}"}

    async def kept() -> bool:
        assert (await client.get(f"{API}/visits", headers=headers)).status == 200
        return cache.get(prefix) is not None

    deadline = time.monotonic() + 5.0
    while not await kept():  # the key's own creation may be announced after the first read
        assert time.monotonic() < deadline, "the key was never kept"

    await api_keys.revoke_api_key(ctx, prefix)  # `rastau revoke-api-key`: another engine, another process
    await until(lambda: cache.get(prefix) is None, within=5.0)
    assert (await client.get(f"{API}/visits", headers=headers)).status == 401
