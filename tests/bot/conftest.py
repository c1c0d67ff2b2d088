"""Bot test fixtures: the Bot API stand-in on 127.0.0.1 and a bot wired to it and to the test database; the
real Redis; two dispatcher contexts on one PostgreSQL."""
from __future__ import annotations

import os

import pytest

from core.db.engine import create_engine
from core.db.uow import UnitOfWorkFactory
from core.services import Context
from devkit.botapi import BotApiStandIn
from tests.bot.support import BOT_ID, BotWorld
from tests.conftest import migrate_from_template


@pytest.fixture
async def standin():
    api = BotApiStandIn(bot_id=BOT_ID)
    await api.start()
    yield api
    await api.stop()


@pytest.fixture
async def world(ctx, standin):
    w = BotWorld(ctx, standin)
    yield w
    await w.close()


@pytest.fixture
async def redis_url() -> str:
    """The machine's Redis (`.ci/run` starts it); a test that needs it fails, saying why, when it is down."""
    from redis.asyncio import Redis

    url = os.environ.get("RASTAU_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    probe = Redis.from_url(url)
    try:
        await probe.ping()
    except Exception as exc:  # noqa: BLE001 - report why
        pytest.fail(f"Redis is not reachable at {url} ({exc}); `.ci/run` starts it")
    finally:
        await probe.aclose()
    return url


@pytest.fixture
async def two_contexts(db_url, settings, clock):
    """Two contexts, each with an engine of its own as two dispatcher processes would have, on one PostgreSQL."""
    if not db_url.startswith("postgresql"):
        pytest.skip("several dispatchers are a PostgreSQL deployment; SQLite runs one")
    await migrate_from_template(db_url)
    engines = [create_engine(db_url), create_engine(db_url)]
    yield [Context.build(settings, UnitOfWorkFactory(e), clock) for e in engines]
    for engine in engines:
        await engine.dispose()
