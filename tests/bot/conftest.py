"""Bot test fixtures: a Bot API server on 127.0.0.1 and a bot wired to it and to the test database."""
from __future__ import annotations

import pytest

from tests.bot.minimal_botapi import MinimalBotApi
from tests.bot.support import BOT_ID, BotWorld


@pytest.fixture
async def standin():
    api = MinimalBotApi(bot_id=BOT_ID)
    await api.start()
    yield api
    await api.stop()


@pytest.fixture
async def world(ctx, standin):
    w = BotWorld(ctx, standin)
    yield w
    await w.close()
