"""Bot test fixtures: the Bot API stand-in on 127.0.0.1 and a bot wired to it and to the test database."""
from __future__ import annotations

import pytest

from devkit.botapi import BotApiStandIn
from tests.bot.support import BOT_ID, BotWorld


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
