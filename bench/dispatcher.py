"""The outbox dispatcher against the Bot API stand-in: does it hold Telegram's cap without tripping it, and
what is its own ceiling with the cap lifted?

The stand-in enforces Telegram's limits (30/s overall, 1/s per chat) and answers 429 when they are broken,
so "no 429" is measured, not assumed. A minimal renderer sends each row's payload text: the figure is the
dispatcher's (claiming, pacing, HTTP, marking done), not the bot's wording.
"""
from __future__ import annotations

import secrets
import time

from bot.app import create_bot
from bot.delivery.dispatcher import OutboxDispatcher
from bot.delivery.types import OutboxItem, Outgoing
from core.clock import SystemClock
from core.config import Settings
from core.db.engine import create_engine
from core.db.migrate import upgrade_to_head
from core.db.uow import UnitOfWorkFactory
from core.model import OutboxMessage
from core.services import Context
from devkit.botapi import BotApiStandIn

TOKEN = "555000:rastau-bench-token"


class PayloadRenderer:
    async def render(self, message: OutboxItem) -> list[Outgoing]:
        return [Outgoing(chat_id=message.payload["chat_id"], text=message.payload["text"], parse_mode=None)]


async def _queue(ctx: Context, count: int, chats: int) -> None:
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        for n in range(count):
            chat = 10_000 + n % chats
            await uow.outbox.add(OutboxMessage(kind="bench", recipient_kind="patient", recipient_id=chat,
                                               due_at=now, payload={"chat_id": chat, "text": f"message {n}"}), now)
        await uow.commit()


async def _run(database_url: str, *, count: int, chats: int, rate_global: float, rate_per_chat: float,
               enforce: bool) -> dict:
    api = BotApiStandIn(enforce_limits=enforce, limit_global=30, limit_per_chat=1)
    await api.start()
    settings = Settings(_env_file=None, mode="dev", database_url=database_url,
                        code_hmac_key=secrets.token_urlsafe(32), template_key=secrets.token_urlsafe(32),
                        api_key_pepper=secrets.token_urlsafe(32), bot_token=TOKEN)
    engine = create_engine(database_url)
    await upgrade_to_head(engine)
    ctx = Context.build(settings, UnitOfWorkFactory(engine), SystemClock())
    await _queue(ctx, count, chats)
    bot = create_bot(TOKEN, api.base_url, timeout=10)
    dispatcher = OutboxDispatcher(ctx, bot, PayloadRenderer(), worker_id="bench", rate_global=rate_global,
                                  rate_per_chat=rate_per_chat, batch=200)
    started = time.perf_counter()
    while await dispatcher.run_once():
        pass
    elapsed = time.perf_counter() - started
    await bot.session.close()
    await engine.dispose()
    await api.stop()
    texts = [m.text for m in api.sent]
    first, last = api.sent[0].at, api.sent[-1].at
    return {"sent": len(api.sent), "unique": len(set(texts)), "queued": count, "elapsed": elapsed,
            "rate": (len(api.sent) - 1) / (last - first) if last > first else float("inf"),
            "refused_429": api.limit_violations, "max_1s": api.max_rate(), "max_1s_chat": api.max_rate_per_chat()}


async def run(database_url_factory, *, capped_count: int, ceiling_count: int) -> dict:
    capped = await _run(database_url_factory(), count=capped_count, chats=max(capped_count // 10, 30),
                        rate_global=30, rate_per_chat=1, enforce=True)
    ceiling = await _run(database_url_factory(), count=ceiling_count, chats=ceiling_count,
                         rate_global=1e9, rate_per_chat=1e9, enforce=False)
    return {"capped": capped, "ceiling": ceiling}


def report(r: dict) -> str:
    c, u = r["capped"], r["ceiling"]
    within = abs(c["rate"] - 30) / 30 <= 0.05
    lost = c["queued"] - c["unique"]
    return "\n".join([
        "SQLite outbox, the real `OutboxDispatcher` and aiogram `Bot`, the stand-in on 127.0.0.1 enforcing "
        "Telegram's limits (it answers 429 to any send over 30/s overall or 1/s per chat).", "",
        "| run | queued | delivered | duplicates | achieved rate | densest 1 s | 429s | time |",
        "|---|---|---|---|---|---|---|---|",
        f"| cap 30 msg/s, 1/s per chat | {c['queued']:,} | {c['unique']:,} | {c['sent'] - c['unique']} | "
        f"{c['rate']:.2f} msg/s | {c['max_1s']} | {c['refused_429']} | {c['elapsed']:.1f} s |",
        f"| cap lifted | {u['queued']:,} | {u['unique']:,} | {u['sent'] - u['unique']} | "
        f"{u['rate']:.0f} msg/s | {u['max_1s']} | — | {u['elapsed']:.1f} s |", "",
        f"- capped rate vs. 30 msg/s: {c['rate'] / 30:.3f}× (target within 5%: {'met' if within else 'MISSED'}); "
        f"429s: {c['refused_429']} (target 0); lost: {lost} (target 0)",
        f"- the dispatcher's own ceiling with the cap lifted: **{u['rate']:.0f} msg/s** "
        "(claim a batch, send concurrently, mark each done; one SQLite writer)",
    ])
