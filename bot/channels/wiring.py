"""The patients' channels in the bot's process (issue 14): which are on, their senders for the outbox dispatcher,
their webhooks (on the Telegram webhook app, or served alone on RASTAU_WEBHOOK_HOST:PORT in long-polling mode) and
their workers. Telegram itself is the dispatcher's own; SMS and WhatsApp come on with their settings."""
from __future__ import annotations

import asyncio

from aiogram.utils.i18n import I18n
from aiohttp import web

from bot.channels.base import Channel
from bot.channels.sms import SmsChannel
from bot.channels.sms_webhook import add_sms_routes
from core.channels import ChannelName
from core.logs import get_logger
from core.services import Context
from core.services.channels import enabled_channels

log = get_logger("rastau.bot")


class ChannelRuntime:
    def __init__(self, ctx: Context, i18n: I18n):
        self._ctx = ctx
        self.enabled = enabled_channels(ctx.settings)
        self.senders: dict[ChannelName, Channel] = {}
        self._sms: SmsChannel | None = None
        self._whatsapp = None
        if ChannelName.SMS in self.enabled:
            self._sms = SmsChannel(ctx, i18n)
            self.senders[ChannelName.SMS] = self._sms
        if ChannelName.WHATSAPP in self.enabled:
            from bot.channels.whatsapp import WhatsAppRuntime
            self._whatsapp = WhatsAppRuntime(ctx, i18n)
            self.senders[ChannelName.WHATSAPP] = self._whatsapp.channel
        self._runner: web.AppRunner | None = None
        log.info("patient channels", channels=sorted(c.value for c in self.enabled),
                 sms_inbound=ctx.settings.sms_inbound_enabled)

    @property
    def has_webhooks(self) -> bool:
        return self._whatsapp is not None or self._ctx.settings.sms_inbound_enabled

    def mount(self, app: web.Application) -> None:
        """The channels' webhooks on an app not started yet (the Telegram webhook app)."""
        add_sms_routes(app, self._ctx)
        if self._whatsapp is not None:
            self._whatsapp.mount(app)

    async def serve(self, host: str, port: int) -> None:
        """Long-polling mode: the channels' webhooks alone on ``host:port``."""
        if not self.has_webhooks:
            return
        app = web.Application(client_max_size=64 * 1024)
        self.mount(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        log.info("channel webhooks listening", host=host, port=port)

    def start_workers(self, stop: asyncio.Event) -> None:
        if self._whatsapp is not None:
            self._whatsapp.start_worker(stop)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._sms is not None:
            await self._sms.close()
        if self._whatsapp is not None:
            await self._whatsapp.close()
