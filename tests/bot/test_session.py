"""The bot's HTTP session (bot/session.py) against the Bot API stand-in."""
from __future__ import annotations

import gc
import weakref

from aiogram.methods.base import Response
from aiogram.types import Message

from bot.app import create_bot
from tests.bot.support import TOKEN, close_bot


async def test_the_model_an_answer_is_read_with_is_built_once_and_kept(standin):
    """aiogram reads each answer as Response[result type], which pydantic caches only weakly: without the session
    holding it, a garbage collection drops it and the next answer builds it again."""
    bot = create_bot(TOKEN, standin.base_url, timeout=5)
    try:
        sent = await bot.send_message(7001, "first")
        assert isinstance(sent, Message)
        model = weakref.ref(Response[Message])
        gc.collect()
        assert model() is not None, "Response[Message] was collected: the next answer would build it again"
        await bot.send_message(7001, "second")
        assert Response[Message] is model()
        assert [m.text for m in standin.messages_to(7001)] == ["first", "second"]
    finally:
        await close_bot(bot)
