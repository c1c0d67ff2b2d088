"""Assembling the bot: Bot, Dispatcher, FSM storage, and the webhook app."""
from __future__ import annotations

from contextlib import suppress
from typing import Any

from aiogram import Bot, Dispatcher, F
from aiogram.client.default import DefaultBotProperties
from aiogram.dispatcher.middlewares.user_context import UserContextMiddleware
from aiogram.enums import ChatType
from aiogram.exceptions import TelegramAPIError
from aiogram.fsm.storage.base import BaseStorage
from aiogram.fsm.storage.memory import MemoryStorage
from aiogram.types import Chat, ErrorEvent, Update
from aiogram.utils.i18n import I18n
from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application
from aiohttp import web

from bot.handlers import build_routers
from bot.i18n import LANGUAGES
from bot.menus import UNLINKED, publish_default, registered_commands
from bot.middlewares import ChatLanguageMiddleware, ProfileMiddleware
from bot.reason_wait import ReasonWaitMiddleware
from bot.session import create_session
from core.config import Settings
from core.logs import get_logger
from core.services import Context
from core.services.updates import claim_update, release_update

log = get_logger("rastau.bot")

WEBHOOK_PATH = "/telegram/webhook"
def create_bot(token: str, api_base: str | None = None, *, timeout: float = 30.0) -> Bot:
    """A Bot speaking HTML, against Telegram or any Bot API server at ``api_base`` (self-hosted, stand-in)."""
    return Bot(token, session=create_session(api_base, timeout=timeout),
               default=DefaultBotProperties(parse_mode="HTML"))


async def publish_commands(bot: Bot, i18n: I18n, dp: Dispatcher | None = None) -> None:
    """The default command menu, in each language: only what an unconnected chat can use (bot.menus); each
    linked chat gets its own menu when it links."""
    known = registered_commands(dp) if dp is not None else set(UNLINKED)
    await publish_default(bot, i18n, known, LANGUAGES)


def create_storage(settings: Settings) -> BaseStorage:
    """FSM state in memory for one instance; in Redis when configured, so several instances share it."""
    if settings.redis_url:
        from aiogram.fsm.storage.base import DefaultKeyBuilder
        from aiogram.fsm.storage.redis import RedisStorage
        return RedisStorage.from_url(settings.redis_url, key_builder=DefaultKeyBuilder(with_bot_id=True),
                                     state_ttl=7 * 24 * 3600, data_ttl=7 * 24 * 3600)
    return MemoryStorage()


class OncePerUpdateDispatcher(Dispatcher):
    """A repeated update (webhook retry, long-poll overlap, a second instance) has one effect.

    Every way in (long polling, the webhook, ``feed_raw_update``) passes ``feed_update``: here, before any
    middleware or handler runs, the first delivery claims its update_id in the database. A failed update's
    claim is released by `apologise`, so Telegram's redelivery can try again. A user who sends anything has
    not blocked the bot, so the same transaction makes their patient rows reachable again. A database that
    fails this very claim fails the update before aiogram's error handling: the webhook answers 500 and
    Telegram redelivers; long polling logs it.
    """

    async def feed_update(self, bot: Bot, update: Update, **kwargs: Any) -> Any:
        sender = UserContextMiddleware.resolve_event_context(update).user
        sender_chat_id = sender.id if sender is not None and not sender.is_bot else None
        if not await claim_update(self["ctx"], bot.id, update.update_id, sender_chat_id=sender_chat_id):
            log.info("duplicate update ignored", update_id=update.update_id)
            return None
        return await super().feed_update(bot, update, **kwargs)


def create_dispatcher(ctx: Context, i18n: I18n, storage: BaseStorage | None = None) -> Dispatcher:
    """Dependencies travel as workflow data (``ctx``, ``i18n``), never as globals."""
    dp = OncePerUpdateDispatcher(storage=storage or MemoryStorage(), ctx=ctx, i18n=i18n)
    dp.update.outer_middleware(ProfileMiddleware())
    dp.update.outer_middleware(ChatLanguageMiddleware(i18n))
    wait = ReasonWaitMiddleware()  # chat-disputes: a command or another button ends the wait for a dispute's reason
    dp.message.outer_middleware(wait)
    dp.callback_query.outer_middleware(wait)
    private = F.chat.type == ChatType.PRIVATE
    for router in build_routers():
        router.message.filter(private)
        router.edited_message.filter(private)
        dp.include_router(router)
    dp.errors.register(apologise)
    return dp


async def apologise(event: ErrorEvent, bot: Bot, ctx: Context, i18n: I18n, event_chat: Chat | None = None) -> bool:
    """A bug or an outage must not leave the user with silence: log it, release the update's claim so that
    Telegram's redelivery can try again, and say sorry in both languages (even when the release fails)."""
    log.error("update handling failed", update_id=event.update.update_id, exc_info=event.exception)
    try:
        await release_update(ctx, bot.id, event.update.update_id)
    finally:
        if event_chat is not None and event_chat.type == ChatType.PRIVATE:
            text = "\n\n".join(i18n.gettext("Sorry, something went wrong on our side. Please try again in a "
                                             "minute.", locale=code) for code in LANGUAGES)
            with suppress(TelegramAPIError):
                await bot.send_message(event_chat.id, text)
    return True


def create_webhook_app(dp: Dispatcher, bot: Bot, secret: str, path: str = WEBHOOK_PATH) -> web.Application:
    """Updates arrive as POSTs carrying ``X-Telegram-Bot-Api-Secret-Token``; a missing or wrong one gets 401
    before any handler runs. Handling happens inside the request, so a failure returns 500 and Telegram
    redelivers (dedupe makes the redelivery harmless)."""
    if not secret:
        raise ValueError("webhook mode needs a secret token")
    app = web.Application()
    SimpleRequestHandler(dispatcher=dp, bot=bot, secret_token=secret, handle_in_background=False).register(app, path)
    setup_application(app, dp, bot=bot)
    return app
