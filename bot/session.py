"""The bot's HTTP session to the Bot API (Telegram, a self-hosted Bot API server, or the stand-in)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import PRODUCTION, TelegramAPIServer
from aiogram.methods.base import Response, TelegramType

if TYPE_CHECKING:
    from aiogram import Bot
    from aiogram.methods import TelegramMethod

_RESPONSE_MODELS: dict[Any, type[Response[Any]]] = {}  # each Response[result type] the bot has read, held


class BotSession(AiohttpSession):
    """aiogram's aiohttp session, keeping alive the response models it reads answers with.

    aiogram reads every Bot API answer as ``Response[<the method's result type>]``, a pydantic generic model that
    pydantic caches only weakly: once the garbage collector has run, the next answer of that type builds the model
    anew (4 ms of CPU for Response[Message]; 325 rebuilds in the 32 tests of tests/bot/test_disputes.py, about 1 s of
    their 14 CPU-s). Held here, each is built once per process."""

    def check_response(self, bot: Bot, method: TelegramMethod[TelegramType], status_code: int,
                       content: str) -> Response[TelegramType]:
        returning = method.__returning__
        if returning not in _RESPONSE_MODELS:
            _RESPONSE_MODELS[returning] = Response[returning]  # type: ignore[valid-type]  # a runtime type, as aiogram's
        return super().check_response(bot, method, status_code, content)


def create_session(api_base: str | None = None, *, timeout: float = 30.0) -> BotSession:
    """The HTTP session to Telegram, or to any Bot API server at ``api_base`` (self-hosted, stand-in)."""
    return BotSession(api=TelegramAPIServer.from_base(api_base) if api_base else PRODUCTION, timeout=timeout)
