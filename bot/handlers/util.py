"""Editing the message a button was pressed on, when Telegram still allows it."""
from __future__ import annotations

from aiogram.exceptions import TelegramBadRequest
from aiogram.types import CallbackQuery, Message


async def drop_buttons(query: CallbackQuery) -> None:
    """Remove the keyboard so it is not pressed again; a message too old to edit keeps it (harmless)."""
    if isinstance(query.message, Message):
        try:
            await query.message.edit_reply_markup(reply_markup=None)
        except TelegramBadRequest:
            pass


async def append_to_message(query: CallbackQuery, footer: str) -> bool:
    """Add the outcome under the question and drop its buttons. False when the message can't be edited."""
    if not isinstance(query.message, Message) or query.message.text is None:
        return False
    try:
        await query.message.edit_text(query.message.html_text + "\n\n" + footer, reply_markup=None)
    except TelegramBadRequest:
        return False
    return True
