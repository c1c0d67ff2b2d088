"""Update-level middlewares, in this order: dedupe by update_id, who the user is, which language to speak."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware, Bot
from aiogram.types import TelegramObject, Update, User
from aiogram.utils.i18n.middleware import I18nMiddleware

from bot.i18n import LANGUAGES
from core.logs import get_logger
from core.services import Context
from core.services.chat import ChatProfile, chat_profile, unblock_chat
from core.services.updates import claim_update, release_update

log = get_logger("rastau.bot")
Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]


class DedupeMiddleware(BaseMiddleware):
    """A repeated update (webhook retry, long-poll overlap, a second instance) has one effect: the first
    delivery claims its update_id in the database. If handling fails the claim is released, so Telegram's
    redelivery can try again."""

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        assert isinstance(event, Update)
        ctx: Context = data["ctx"]
        bot: Bot = data["bot"]
        if not await claim_update(ctx, bot.id, event.update_id):
            log.info("duplicate update ignored", update_id=event.update_id)
            return None
        try:
            return await handler(event, data)
        except Exception:
            await release_update(ctx, bot.id, event.update_id)
            raise


class ProfileMiddleware(BaseMiddleware):
    """Loads what this chat is linked to (patient / doctor / admin rows) once per update, as ``profile``.
    Updates without a user (channel posts, polls) are not for this bot and stop here."""

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        user: User | None = data.get("event_from_user")
        if user is None or user.is_bot:
            return None
        profile = await chat_profile(data["ctx"], user.id)
        if any(p.chat_blocked for p in profile.patients):  # they write to us, so they unblocked the bot
            await unblock_chat(data["ctx"], user.id)
            profile = await chat_profile(data["ctx"], user.id)
        data["profile"] = profile
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
