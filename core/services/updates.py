"""Telegram update dedupe: a webhook retry or a second bot instance must not handle one update twice."""
from __future__ import annotations

import datetime as dt

from core.errors import ConcurrentWrite
from core.model import ensure_utc
from core.services import Context


async def claim_update(ctx: Context, bot_id: int, update_id: int, *, sender_chat_id: int | None = None) -> bool:
    """True the first time this update is seen; False for a repeat (webhook retry, a second instance).
    The sender's chat wrote to us, so it has not blocked the bot: messages can reach its patients again."""
    try:
        async with ctx.uow() as uow:
            await uow.processed_updates.add(bot_id, update_id, ctx.clock.now())
            if sender_chat_id is not None:
                await uow.patients.unblock_chat(sender_chat_id)
            await uow.commit()
    except ConcurrentWrite:
        return False
    return True


async def release_update(ctx: Context, bot_id: int, update_id: int) -> None:
    """Handling failed: let Telegram's redelivery of this update run again."""
    async with ctx.uow() as uow:
        await uow.processed_updates.release(bot_id, update_id)
        await uow.commit()


async def prune_processed_updates(ctx: Context, older_than: dt.timedelta = dt.timedelta(days=2)) -> int:
    """Telegram stops redelivering an update after 24 hours; older ids need not be remembered."""
    cutoff = ensure_utc(ctx.clock.now()) - older_than
    async with ctx.uow() as uow:
        pruned = await uow.processed_updates.prune(cutoff)
        await uow.commit()
    return pruned
