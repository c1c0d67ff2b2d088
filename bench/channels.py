"""The outbox dispatcher sending on Telegram, WhatsApp and SMS at once (issue 14): does it hold each channel's limits
(Telegram 30/s overall and 1/s per chat, WhatsApp's configured rate per business number, the SMS gateway's rate)
with no rate-limit error and nothing lost?

Each stand-in enforces its own limit and refuses what breaks it (Telegram 429, WhatsApp 130429, the gateway 429), so
"0 refused" is measured, not assumed. A minimal renderer hands each row to its channel (Telegram: the row's text;
WhatsApp and SMS: the "were you there?" question through the real WhatsApp and SMS channels), so the figures are the
dispatcher's and the channels' (pacing, HTTP, marking done), not the database's rendering.

    .venv/bin/python -m bench.channels [--smoke]
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bot.app import create_bot
from bot.channels.base import Address, AttendanceQuestion, PatientMessage
from bot.channels.sms import SmsChannel
from bot.channels.whatsapp import WhatsAppChannel
from bot.delivery.dispatcher import OutboxDispatcher
from bot.delivery.types import OutboxItem, Outgoing
from bot.i18n import make_i18n
from core.channels import ChannelName
from core.clock import SystemClock
from core.config import Settings
from core.db import tables as t
from core.db.engine import create_engine
from core.db.migrate import upgrade_to_head
from core.db.uow import UnitOfWorkFactory
from core.model import OutboxKind, OutboxMessage, Recipient
from core.services import Context
from devkit.botapi import BotApiStandIn
from devkit.sms_gateway import SmsGatewayStandIn
from devkit.whatsapp import WhatsAppStandIn, add_rastau_templates

TOKEN = "555000:rastau-channels-bench"
WA_RATE, SMS_RATE = 20, 10  # per second: the business number's and the gateway's limits, as configured


class ChannelRenderer:
    def __init__(self) -> None:
        self.start = dt.datetime.now(dt.UTC)

    async def render(self, message: OutboxItem) -> list[Outgoing] | PatientMessage:
        p = message.payload
        if p["via"] == "telegram":
            return [Outgoing(chat_id=int(p["to"]), text=f"message {message.id}", parse_mode=None)]
        question = AttendanceQuestion(visit_id=message.id, clinic="Emhana No. 5", doctor="Aidos Seitkali",
                                      start=self.start, online=False, locale="ru")
        return PatientMessage(message.recipient_id, question,
                              (Address(ChannelName(p["via"]), str(p["to"]), patient_id=message.recipient_id),))


async def _queue(ctx: Context, per_channel: dict[str, int]) -> dict[str, list[str]]:
    now = ctx.clock.now()
    recipients: dict[str, list[str]] = {}
    order = [via for round_ in range(max(per_channel.values())) for via, count in per_channel.items()
             if round_ < count]  # interleaved, as a real day's rows are
    async with ctx.uow() as uow:
        for n, via in enumerate(order, start=1):
            to = {"telegram": str(10_000 + n), "whatsapp": f"7701{n:07d}", "sms": f"+7701{n:07d}"}[via]
            recipients.setdefault(via, []).append(to)
            await uow.outbox.add(OutboxMessage(kind=OutboxKind.ATTENDANCE_PROMPT, recipient_kind=Recipient.PATIENT,
                                               recipient_id=n, due_at=now, payload={"via": via, "to": to}), now)
        await uow.commit()
    return recipients


def _densest(times: list[float]) -> int:
    times, best, start = sorted(times), 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


async def run(database_url: str, per_channel: dict[str, int]) -> dict[str, Any]:
    telegram = BotApiStandIn(enforce_limits=True, limit_global=30, limit_per_chat=1)
    whatsapp = WhatsAppStandIn(enforce_limits=True, limit_per_second=WA_RATE, auto_statuses=())
    add_rastau_templates(whatsapp)
    gateway = SmsGatewayStandIn(max_rate=SMS_RATE)
    for standin in (telegram, whatsapp, gateway):
        await standin.start()
    settings = Settings(_env_file=None, mode="dev", database_url=database_url, code_hmac_key=secrets.token_urlsafe(32),
                        template_key=secrets.token_urlsafe(32), api_key_pepper=secrets.token_urlsafe(32),
                        bot_token=TOKEN, whatsapp_phone_number_id=whatsapp.phone_number_id,
                        whatsapp_access_token=whatsapp.access_token, whatsapp_app_secret=whatsapp.app_secret,
                        whatsapp_verify_token=secrets.token_urlsafe(16), whatsapp_api_base=whatsapp.base_url,
                        whatsapp_rate=WA_RATE, sms_gateway_url=gateway.base_url, sms_login=gateway.login,
                        sms_password=gateway.password, sms_inbound_secret=secrets.token_urlsafe(24), sms_rate=SMS_RATE)
    engine = create_engine(database_url)
    await upgrade_to_head(engine)
    ctx = Context.build(settings, UnitOfWorkFactory(engine), SystemClock())
    recipients = await _queue(ctx, per_channel)
    for wa_id in recipients.get("whatsapp", []):
        whatsapp.add_user(wa_id)
    i18n = make_i18n()
    bot = create_bot(TOKEN, telegram.base_url, timeout=10)
    wa_channel, sms_channel = WhatsAppChannel(ctx, i18n), SmsChannel(ctx, i18n)
    dispatcher = OutboxDispatcher(ctx, bot, ChannelRenderer(), worker_id="bench-channels", rate_global=30,
                                  rate_per_chat=1, batch=200,
                                  channels={ChannelName.WHATSAPP: wa_channel, ChannelName.SMS: sms_channel})
    started = time.perf_counter()
    while await dispatcher.run_once():
        pass
    elapsed = time.perf_counter() - started
    async with ctx.uow(read_only=True) as uow:
        statuses: dict[str, int] = dict((await uow.conn.execute(sa.select(t.outbox.c.status, sa.func.count()).group_by(
            t.outbox.c.status))).all())
    await bot.session.close()
    await wa_channel.api.close()
    await sms_channel.close()
    await engine.dispose()
    for standin in (telegram, whatsapp, gateway):
        await standin.stop()
    return {
        "queued": per_channel, "elapsed": elapsed, "statuses": statuses,
        "telegram": {"sent": len(telegram.sent), "refused": telegram.limit_violations,
                     "densest": telegram.max_rate(), "cap": 30},
        "whatsapp": {"sent": len(whatsapp.sent), "refused": whatsapp.limit_violations,
                     "densest": whatsapp.max_rate(), "cap": WA_RATE},
        "sms": {"sent": len(gateway.sent), "refused": gateway.rate_limited,
                "densest": _densest([m.at for m in gateway.sent]), "cap": SMS_RATE},
    }


def report(r: dict[str, Any]) -> str:
    lines = [
        "The real `OutboxDispatcher` with the real Telegram, WhatsApp and SMS senders, each against its stand-in on "
        "127.0.0.1 enforcing its limit (Telegram 30/s and 1/s per chat; WhatsApp "
        f"{WA_RATE}/s per business number, as RASTAU_WHATSAPP_RATE; the SMS gateway {SMS_RATE}/s, as "
        "RASTAU_SMS_RATE), all three rows mixed in one queue and sent at once. One dispatcher on SQLite.", "",
        "| channel | queued | delivered | densest 1 s | its limit | refused for rate |", "|---|---|---|---|---|---|"]
    for via in ("telegram", "whatsapp", "sms"):
        c = r[via]
        lines.append(f"| {via} | {r['queued'][via]} | {c['sent']} | {c['densest']} | {c['cap']}/s | {c['refused']} |")
    lost = sum(r["queued"].values()) - r["statuses"].get("sent", 0)
    lines += ["", f"- outbox rows: {r['statuses']}; lost: {lost} (target 0); rate-limit refusals: "
                  f"{sum(r[v]['refused'] for v in ('telegram', 'whatsapp', 'sms'))} (target 0); "
                  f"all sent in {r['elapsed']:.1f} s",
              "- what the limits alone allow is ~10 s (the slowest channel's share at its rate); the rest is rows "
              "waiting for a slow channel's turn while they hold the dispatcher's concurrency slots (32, shared by all "
              "channels): per-channel slots would remove it (not done)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the dispatcher on three channels at once")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    sizes = {"telegram": 30, "whatsapp": 20, "sms": 10} if args.smoke else {"telegram": 300, "whatsapp": 200,
                                                                           "sms": 100}
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}", sizes))
    from bench.results import write_section
    write_section("Dispatcher on three channels at once (issue 14)", report(result), smoke=args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
