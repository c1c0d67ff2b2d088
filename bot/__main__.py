"""``python -m bot`` / ``rastau-bot``: the Telegram bot, its scheduler and the outbox dispatcher in one process.

Long polling by default; ``RASTAU_BOT_MODE=webhook`` serves updates on an aiohttp app instead.
"""
from __future__ import annotations

import asyncio
import signal

from aiogram import Bot, Dispatcher
from aiohttp import web

from bot.app import WEBHOOK_PATH, create_bot, create_dispatcher, create_storage, create_webhook_app, publish_commands
from bot.channels.wiring import ChannelRuntime
from bot.delivery.dispatcher import OutboxDispatcher
from bot.delivery.shared_limits import SharedSendPacer
from bot.delivery.webhook import PayerWebhookSender
from bot.i18n import make_i18n
from bot.rendering import OutboxRenderer
from bot.scheduling import start_scheduler
from core.clock import SystemClock
from core.config import Settings
from core.db.engine import create_engine
from core.db.migrate import ensure_schema_current
from core.db.uow import UnitOfWorkFactory
from core.logs import configure_logging, get_logger
from core.services import Context
from core.signing import Signer

log = get_logger("rastau.bot")


async def run(settings: Settings) -> None:
    engine = create_engine(settings.database_url)
    await ensure_schema_current(engine)
    ctx = Context.build(settings, UnitOfWorkFactory(engine), SystemClock())
    i18n = make_i18n()
    assert settings.bot_token is not None, "main() refuses to start without one"
    bot = create_bot(settings.bot_token.get_secret_value(), settings.telegram_api_base)
    storage = create_storage(settings)
    dp = create_dispatcher(ctx, i18n, storage)
    pacer = shared_pacer(settings)
    channels = ChannelRuntime(ctx, i18n)  # issue 14: SMS and WhatsApp when configured; Telegram is the dispatcher's
    dispatcher = OutboxDispatcher(ctx, bot, OutboxRenderer(ctx, i18n, channels=channels.enabled),
                                  worker_id=settings.dispatcher_id, pacer=pacer, channels=channels.senders)
    await publish_commands(bot, i18n, dp)
    payer = PayerWebhookSender(ctx, worker_id=settings.dispatcher_id) if settings.payer_webhook_url else None
    scheduler = await start_scheduler(ctx, dispatcher, signer=Signer.from_settings(settings), payer=payer)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    channels.start_workers(stop)
    try:
        if settings.bot_mode == "webhook":
            await _serve_webhook(settings, dp, bot, stop, channels)
        else:
            await channels.serve(settings.webhook_host, settings.webhook_port)
            polling = asyncio.create_task(dp.start_polling(bot, handle_signals=False, close_bot_session=False))
            await stop.wait()
            await dp.stop_polling()
            await polling
    finally:
        log.info("bot stopping")
        scheduler.shutdown(wait=True)
        await channels.close()
        await storage.close()
        if payer is not None:
            await payer.close()
        if pacer is not None:
            await pacer.close()
        await bot.session.close()
        await engine.dispose()


def shared_pacer(settings: Settings) -> SharedSendPacer | None:
    """With Redis, every dispatcher counts against one set of Telegram limits; alone, each paces itself."""
    if not settings.redis_url:
        return None
    log.info("send limits shared through Redis", global_rate=settings.send_rate_global,
             chat_rate=settings.send_rate_per_chat)
    return SharedSendPacer.from_url(settings.redis_url, settings.send_rate_global, settings.send_rate_per_chat)


async def _serve_webhook(settings: Settings, dp: Dispatcher, bot: Bot, stop: asyncio.Event,
                         channels: ChannelRuntime) -> None:
    assert settings.webhook_secret is not None, "require_secrets(bot=True) demands or invents it in webhook mode"
    secret = settings.webhook_secret.get_secret_value()
    app = create_webhook_app(dp, bot, secret)
    channels.mount(app)  # issue 14: the SMS gateway's and WhatsApp's webhooks beside Telegram's
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, settings.webhook_host, settings.webhook_port).start()
    if settings.webhook_url:
        await bot.set_webhook(settings.webhook_url.rstrip("/") + WEBHOOK_PATH, secret_token=secret,
                              allowed_updates=dp.resolve_used_update_types())
    log.info("webhook listening", host=settings.webhook_host, port=settings.webhook_port)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> int:
    settings = Settings().require_secrets(bot=True, signing=True)  # the bot signs the audit checkpoints
    if settings.bot_token is None:
        raise SystemExit("RASTAU_BOT_TOKEN is not set: get a token from @BotFather and put it in .env")
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(run(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
