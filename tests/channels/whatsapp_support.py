"""A WhatsApp world for tests: the Cloud API stand-in (devkit/whatsapp.py), the real webhook served over HTTP on
127.0.0.1, the real channel and inbox worker, on the test database (SQLite and PostgreSQL)."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from aiohttp import web
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.channels.whatsapp import WhatsAppChannel, WhatsAppInbox, create_whatsapp_app
from bot.delivery.limits import SendPacer
from bot.i18n import make_i18n
from core.clock import ManualClock
from core.db import tables as t
from core.db.uow import UnitOfWorkFactory
from core.model import OutboxKind, OutboxMessage, Recipient
from core.services import Context
from devkit.whatsapp import WhatsAppStandIn, add_rastau_templates
from tests.bot.dispatch_support import FastTime
from tests.conftest import test_settings

VERIFY_TOKEN = "verify-token-0123456789"


def wa_id(phone: str) -> str:
    """The wa_id WhatsApp gives a Kazakhstan number: its digits, no "+"."""
    return "".join(ch for ch in phone if ch.isdigit())


@dataclass
class WaWorld:
    api: WhatsAppStandIn
    ctx: Context
    channel: WhatsAppChannel
    inbox: WhatsAppInbox
    webhook_url: str
    pace: FastTime  # the channel's pace, ten times real time

    def pacer(self, global_rate: float = 1000, chat_rate: float = 1000) -> SendPacer:
        """A pacer on the world's pace: a dispatcher's deadlines must be on the clock of the channels it sends on."""
        return SendPacer(global_rate, chat_rate, self.pace)

    async def settle(self) -> int:
        """Every webhook answered, then everything queued handled (replies included, and their statuses)."""
        handled = 0
        for _ in range(10):
            await self.api.settle()
            round_ = await self.inbox.drain()
            handled += round_
            if not round_ and not self.api._pending:
                break
        return handled

    async def channel_row(self, patient_id: int):
        async with self.ctx.uow() as uow:
            return (await uow.conn.execute(select(t.patient_channels).where(
                t.patient_channels.c.patient_id == patient_id, t.patient_channels.c.channel == "whatsapp"))).first()

    async def language(self, patient_id: int) -> str:
        async with self.ctx.uow() as uow:
            return (await uow.patients.get(patient_id)).language.value

    async def queued(self) -> int:
        async with self.ctx.uow() as uow:
            return len((await uow.conn.execute(select(t.inbound_messages))).all())

    async def outbox_row_sent_as(self, wamid: str, patient_id: int) -> int:
        """An outbox row the dispatcher would have marked sent on WhatsApp with this wamid (the dispatcher is
        channels-core's; this is the state it leaves)."""
        async with self.ctx.uow() as uow:
            row_id = await uow.outbox.add(OutboxMessage(kind=OutboxKind.VISIT_CODE, recipient_kind=Recipient.PATIENT,
                                                        recipient_id=patient_id, due_at=self.ctx.clock.now(),
                                                        payload={}),
                                          self.ctx.clock.now())
            assert row_id is not None
            await uow.conn.execute(update(t.outbox).where(t.outbox.c.id == row_id).values(
                status="sent", sent_at=self.ctx.clock.now(), channel="whatsapp", channel_message_id=wamid))
            await uow.commit()
        return row_id

    async def outbox(self, row_id: int):
        async with self.ctx.uow() as uow:
            return await uow.outbox.get(row_id)


async def start_world(db_url: str, engine: AsyncEngine, clock: ManualClock, **settings_overrides: object):
    api = WhatsAppStandIn(clock=lambda: clock.now().timestamp())
    add_rastau_templates(api)
    await api.start()
    settings = test_settings(db_url, whatsapp_phone_number_id=api.phone_number_id,
                             whatsapp_access_token=api.access_token, whatsapp_app_secret=api.app_secret,
                             whatsapp_verify_token=VERIFY_TOKEN, whatsapp_api_base=api.base_url,
                             **settings_overrides)
    ctx = Context.build(settings, UnitOfWorkFactory(engine), clock)
    pace = FastTime(10)
    channel = WhatsAppChannel(ctx, make_i18n(), pacer=SendPacer(1000, 1000, pace))
    inbox = WhatsAppInbox(ctx, channel)
    runner = web.AppRunner(create_whatsapp_app(ctx, wake=inbox.wake), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    api.webhook_url = f"http://127.0.0.1:{port}{settings.whatsapp_webhook_path}"
    world = WaWorld(api, ctx, channel, inbox, api.webhook_url, pace)

    async def stop() -> None:
        await api.stop()
        await channel.api.close()
        await runner.cleanup()

    return world, stop


def hours(n: float) -> dt.timedelta:
    return dt.timedelta(hours=n)
