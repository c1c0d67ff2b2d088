"""Helpers for dispatcher tests: a minimal renderer (the contract, not the bot's texts) and queueing."""
from __future__ import annotations

import asyncio
import datetime as dt
import time

from aiogram import Bot

from bot.delivery.types import OutboxItem, Outgoing
from bot.session import create_session
from core.model import OutboxKind, OutboxMessage, Recipient

TOKEN = "123456:TEST-token-for-standin"


class FastTime:
    """Paced time running ``factor`` times faster than real time: the pacer's waits (Telegram's 1/s per chat,
    30/s overall, 429 pauses) pass in a ``factor``-th of the wall time. Hand the same one to the pacer and to the
    stand-in that counts the limits, so both count the same seconds; the network's real latency then looks
    ``factor`` times longer to them, which the pacer must (and does) absorb anyway."""

    def __init__(self, factor: float = 10.0):
        self.factor = factor
        self._started = time.monotonic()

    def now(self) -> float:
        return self._started + (time.monotonic() - self._started) * self.factor

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.factor)


class EchoRenderer:
    """Renders payload {"chat_id", "text", "file"?} verbatim, so tests see exactly what was queued."""

    def __init__(self):
        self.rendered: list[int] = []

    async def render(self, message: OutboxItem) -> list[Outgoing] | None:
        self.rendered.append(message.id)
        p = message.payload
        if p.get("skip"):
            return None
        parts = [Outgoing(chat_id=p["chat_id"], text=f'{p["text"]} #{message.id}', parse_mode=None)]
        if p.get("file"):
            parts.append(Outgoing(chat_id=p["chat_id"], text="", document=(p["file"], b"a,b\n1,2\n"),
                                  parse_mode=None))
        return parts


async def queue(ctx, chat_id: int, text: str = "hello", *, due: dt.datetime | None = None, **extra) -> int:
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        message_id = await uow.outbox.add(OutboxMessage(
            kind=OutboxKind.ATTENDANCE_PROMPT, recipient_kind=Recipient.PATIENT, recipient_id=chat_id,
            due_at=due or now, payload={"chat_id": chat_id, "text": text, **extra}), now)
        await uow.commit()
    return message_id


def make_bot(base_url: str, token: str = TOKEN, timeout: float = 5.0) -> Bot:
    """A plain Bot (no default parse mode) on the product's session (bot.session.create_session)."""
    return Bot(token, session=create_session(base_url, timeout=timeout))


async def statuses(ctx) -> dict[int, str]:
    import sqlalchemy as sa

    from core.db import tables as t
    async with ctx.uow() as uow:
        rows = (await uow.conn.execute(sa.select(t.outbox.c.id, t.outbox.c.status))).all()
    return {r.id: r.status for r in rows}
