"""The wait for the reason of "I wasn't there" (issue 17).

After a dispute is recorded the bot takes the patient's next text as its reason, but only while the patient is
plainly still answering: any command or any other button ends the wait, and so does time (the same window the
service enforces, ``dispute_reason_minutes`` after the dispute). When the wait ends, for whatever cause, the «Skip»
button is taken off its message, so nothing on screen suggests the bot is still waiting.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

from aiogram import BaseMiddleware, Bot
from aiogram.exceptions import TelegramAPIError
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, Message, TelegramObject

from core.services import Context
from core.services.dispute_answers import reason_welcome

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]


class DisputeReason(StatesGroup):
    waiting = State()


async def start_wait(state: FSMContext, *, visit_id: int, disputed_at: dt.datetime, skip_message_id: int) -> None:
    await state.set_state(DisputeReason.waiting)
    await state.set_data({"visit_id": visit_id, "since": disputed_at.isoformat(), "skip_message": skip_message_id})


async def end_wait(state: FSMContext, bot: Bot, chat_id: int) -> None:
    """Forget the wait and take «Skip» off its message (a message too old to edit keeps it: harmless)."""
    data = await state.get_data()
    await state.clear()
    skip_message = data.get("skip_message")
    if isinstance(skip_message, int):
        with suppress(TelegramAPIError):
            await bot.edit_message_reply_markup(chat_id=chat_id, message_id=skip_message, reply_markup=None)


async def waiting_since(state: FSMContext) -> dt.datetime | None:
    if await state.get_state() != DisputeReason.waiting.state:
        return None
    since = (await state.get_data()).get("since")
    try:
        return dt.datetime.fromisoformat(since) if isinstance(since, str) else None
    except ValueError:
        return None


class ReasonWaitMiddleware(BaseMiddleware):
    """Runs before every message and button of a chat that waits for a reason: a command, another button, or the
    end of the window ends the wait before any handler sees the update (so the later text is not a reason)."""

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        state: FSMContext | None = data.get("state")
        if state is not None and await state.get_state() == DisputeReason.waiting.state:
            ctx: Context = data["ctx"]
            since = await waiting_since(state)
            expired = not reason_welcome(ctx.settings, since, ctx.clock.now())
            command = isinstance(event, Message) and (event.text or "").startswith("/")
            # «Skip» ends the wait itself; a second tap on «Yes, I wasn't there» (a double tap) changes nothing
            other_button = isinstance(event, CallbackQuery) and not (event.data or "").startswith(("noreason:",
                                                                                                  "sure:yes:"))
            chat_id = _chat_of(event)
            if (expired or command or other_button) and chat_id is not None:
                await end_wait(state, data["bot"], chat_id)
                data["raw_state"] = None  # the state filters read this, loaded before the wait ended
                if expired and isinstance(event, Message) and event.text and not command:
                    data["reason_too_late"] = True
        return await handler(event, data)


def _chat_of(event: TelegramObject) -> int | None:
    if isinstance(event, Message):
        return event.chat.id
    if isinstance(event, CallbackQuery) and event.from_user is not None:
        return event.from_user.id
    return None
