"""The clinic admin's /digest [date]: the same digest as the morning one, on demand."""
from __future__ import annotations

import datetime as dt
import re

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import BufferedInputFile, Message

from bot.i18n import _
from bot.rendering import digest_parts
from core.clock import ALMATY, to_local
from core.services import Context
from core.services.chat import ChatProfile
from core.services.digest import build_digest

_DATE_FORMATS = ("%Y-%m-%d", "%d.%m.%Y", "%d.%m.%y", "%d/%m/%Y")


def parse_day(arg: str | None, today: dt.date) -> dt.date | None:
    """No argument → yesterday. Accepts 2026-11-24, 24.11.2026, 24.11.26, 24.11 (this year). None if junk."""
    if not arg or not arg.strip():
        return today - dt.timedelta(days=1)
    text = arg.strip().split()[0]
    if re.fullmatch(r"\d{1,2}\.\d{1,2}", text):
        text = f"{text}.{today.year}"
    for fmt in _DATE_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt).date()  # noqa: DTZ007 - a calendar day, no instant
        except ValueError:
            continue
    return None


async def digest(message: Message, command: CommandObject, profile: ChatProfile, ctx: Context) -> None:
    if not profile.admins:
        await message.answer(_("/digest is only for clinic administrators."))
        return
    today = to_local(ctx.clock.now(), ALMATY).date()
    day = parse_day(command.args, today)
    if day is None:
        await message.answer(_("I did not understand the date. Write it like this: /digest 24.11.2026"))
        return
    if day > today:
        await message.answer(_("That day has not come yet. Choose today or an earlier day."))
        return
    for admin in profile.admins:
        for part in digest_parts(await build_digest(ctx, admin.clinic_id, day), message.chat.id):
            if part.document is not None:
                filename, data = part.document
                await message.answer_document(BufferedInputFile(data, filename=filename), caption=part.text)
            else:
                await message.answer(part.text)


def build_router() -> Router:
    """A fresh Router for each Dispatcher: aiogram attaches a router to one parent only."""
    router = Router(name="admin")
    router.message.register(digest, Command("digest"))
    return router
