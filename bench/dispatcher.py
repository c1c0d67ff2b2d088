"""The outbox dispatcher against the Bot API stand-in: does it hold Telegram's cap without tripping it, do two
dispatchers sharing the cap through Redis hold it together, and what is the ceiling with the cap lifted?

The stand-in enforces Telegram's limits (30/s overall, 1/s per chat) and answers 429 when they are broken,
so "no 429" is measured, not assumed. A minimal renderer sends each row's payload text: the figure is the
dispatcher's (claiming, pacing, HTTP, marking done), not the bot's wording.
"""
from __future__ import annotations

import asyncio
import secrets
import time
import uuid

from bot.app import create_bot
from bot.delivery.dispatcher import OutboxDispatcher
from bot.delivery.shared_limits import SharedSendPacer
from bot.delivery.types import OutboxItem, Outgoing
from core.clock import SystemClock
from core.config import Settings
from core.db.engine import create_engine
from core.db.migrate import upgrade_to_head
from core.db.uow import UnitOfWorkFactory
from core.model import OutboxKind, OutboxMessage, Recipient
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
            await uow.outbox.add(OutboxMessage(kind=OutboxKind.ATTENDANCE_PROMPT, recipient_kind=Recipient.PATIENT,
                                               recipient_id=chat, due_at=now,
                                               payload={"chat_id": chat, "text": f"message {n}"}), now)
        await uow.commit()


async def _run(database_url: str, *, count: int, chats: int, rate_global: float, rate_per_chat: float,
               enforce: bool, dispatchers: int = 1, redis_url: str | None = None) -> dict:
    """``dispatchers`` each with an engine of its own, as separate processes would have; with ``redis_url`` they
    share one set of limits."""
    api = BotApiStandIn(enforce_limits=enforce, limit_global=30, limit_per_chat=1)
    await api.start()
    settings = Settings(_env_file=None, mode="dev", database_url=database_url,
                        code_hmac_key=secrets.token_urlsafe(32), template_key=secrets.token_urlsafe(32),
                        api_key_pepper=secrets.token_urlsafe(32), bot_token=TOKEN)
    engines = [create_engine(database_url) for _ in range(dispatchers)]
    await upgrade_to_head(engines[0])
    contexts = [Context.build(settings, UnitOfWorkFactory(engine), SystemClock()) for engine in engines]
    await _queue(contexts[0], count, chats)
    namespace = f"rastau:bench:{uuid.uuid4().hex}"
    pacers = [SharedSendPacer.from_url(redis_url, rate_global, rate_per_chat, namespace=namespace)
              if redis_url else None for _ in range(dispatchers)]
    bots = [create_bot(TOKEN, api.base_url, timeout=10) for _ in range(dispatchers)]
    workers = [OutboxDispatcher(ctx, bot, PayloadRenderer(), worker_id=f"bench-{n}", rate_global=rate_global,
                                rate_per_chat=rate_per_chat, batch=200 // dispatchers, pacer=pacer)
               for n, (ctx, bot, pacer) in enumerate(zip(contexts, bots, pacers))]

    async def drain(worker: OutboxDispatcher) -> None:
        while await worker.run_once():
            pass

    started = time.perf_counter()
    await asyncio.gather(*(drain(worker) for worker in workers))
    elapsed = time.perf_counter() - started
    for bot, pacer in zip(bots, pacers):
        await bot.session.close()
        if pacer is not None:
            await pacer.close()
    for engine in engines:
        await engine.dispose()
    await api.stop()
    texts = [m.text for m in api.sent]
    first, last = api.sent[0].at, api.sent[-1].at
    return {"sent": len(api.sent), "unique": len(set(texts)), "queued": count, "elapsed": elapsed,
            "rate": (len(api.sent) - 1) / (last - first) if last > first else float("inf"),
            "refused_429": api.limit_violations, "max_1s": api.max_rate(), "max_1s_chat": api.max_rate_per_chat()}


async def run(database_url_factory, *, capped_count: int, ceiling_count: int, shared_database_url: str,
              redis_url: str) -> dict:
    capped = await _run(database_url_factory(), count=capped_count, chats=max(capped_count // 10, 30),
                        rate_global=30, rate_per_chat=1, enforce=True)
    shared = await _run(shared_database_url, count=capped_count // 2, chats=max(capped_count // 20, 30),
                        rate_global=30, rate_per_chat=1, enforce=True, dispatchers=2, redis_url=redis_url)
    ceiling = await _run(database_url_factory(), count=ceiling_count, chats=ceiling_count,
                         rate_global=1e9, rate_per_chat=1e9, enforce=False)
    return {"capped": capped, "shared": shared, "ceiling": ceiling}


def _capped_line(label: str, run: dict) -> str:
    within = abs(run["rate"] - 30) / 30 <= 0.05
    return (f"- {label}: {run['rate'] / 30:.3f}× of 30 msg/s (target within 5%: {'met' if within else 'MISSED'}); "
            f"429s: {run['refused_429']} (target 0); lost: {run['queued'] - run['unique']} (target 0); "
            f"duplicates: {run['sent'] - run['unique']} (target 0)")


def report(r: dict) -> str:
    c, s, u = r["capped"], r["shared"], r["ceiling"]
    return "\n".join([
        "The real `OutboxDispatcher` and aiogram `Bot`, the stand-in on 127.0.0.1 enforcing Telegram's limits (it "
        "answers 429 to any send over 30/s overall or 1/s per chat). One dispatcher on SQLite; two on one "
        "PostgreSQL sharing the limits through Redis (`RASTAU_REDIS_URL`).", "",
        "| run | queued | delivered | duplicates | achieved rate | densest 1 s | 429s | time |",
        "|---|---|---|---|---|---|---|---|",
        f"| cap 30 msg/s, 1/s per chat | {c['queued']:,} | {c['unique']:,} | {c['sent'] - c['unique']} | "
        f"{c['rate']:.2f} msg/s | {c['max_1s']} | {c['refused_429']} | {c['elapsed']:.1f} s |",
        f"| two dispatchers, one shared cap | {s['queued']:,} | {s['unique']:,} | {s['sent'] - s['unique']} | "
        f"{s['rate']:.2f} msg/s | {s['max_1s']} | {s['refused_429']} | {s['elapsed']:.1f} s |",
        f"| cap lifted | {u['queued']:,} | {u['unique']:,} | {u['sent'] - u['unique']} | "
        f"{u['rate']:.0f} msg/s | {u['max_1s']} | — | {u['elapsed']:.1f} s |", "",
        _capped_line("one dispatcher", c),
        _capped_line("two dispatchers sharing the cap through Redis", s),
        f"- the dispatcher's own ceiling with the cap lifted: **{u['rate']:.0f} msg/s** "
        "(claim a batch, send concurrently, mark each done; one SQLite writer)",
    ])
