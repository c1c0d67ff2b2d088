"""Update-level middlewares; they only load and inject, never write: who the user is, which language to speak.
Writes that every update makes (the dedupe claim, unblocking a chat) happen at intake, in ``bot.app``."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import TelegramObject, User
from aiogram.utils.i18n.middleware import I18nMiddleware

from bot.i18n import LANGUAGES
from core.services.chat import ChatProfile, chat_profile

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]


class ProfileMiddleware(BaseMiddleware):
    """Loads what this chat is linked to (patient / doctor / admin rows) once per update, as ``profile``.
    Updates without a user (channel posts, polls) are not for this bot and stop here."""

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        user: User | None = data.get("event_from_user")
        if user is None or user.is_bot:
            return None
        data["profile"] = await chat_profile(data["ctx"], user.id)
        return await handler(event, data)


def telegram_language(user: User | None) -> str | None:
    """Telegram's language_code, when it is one of ours; only a hint to preselect the language button."""
    code = (user.language_code or "").lower().split("-")[0] if user else ""
    return {"kz": "kk"}.get(code, code) if code in (*LANGUAGES, "kz") else None


class ChatLanguageMiddleware(I18nMiddleware):
    """The chat's own choice wins, then a linked patient's stored language, then Telegram's hint."""

    async def get_locale(self, event: TelegramObject, data: dict[str, Any]) -> str:
        profile: ChatProfile | None = data.get("profile")
        chosen = profile.preferred_language if profile else None
        if chosen is not None:
            return chosen.value
        return telegram_language(data.get("event_from_user")) or self.i18n.default_locale
