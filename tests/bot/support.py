"""Driving the bot like Telegram users would: updates go in through the Dispatcher (or the webhook), and
everything the real aiogram Bot sends goes over HTTP to the Bot API stand-in, which records it."""
from __future__ import annotations

import datetime as dt
import itertools
import json
from dataclasses import dataclass

from aiogram import Bot, Dispatcher

from bot.app import create_bot, create_dispatcher
from bot.delivery.dispatcher import OutboxDispatcher
from bot.i18n import make_i18n
from bot.rendering import OutboxRenderer
from core.services.visits import register_visit

TOKEN = "424242:rastau-bot-test-token"
BOT_ID = 424242

_update_ids = itertools.count(1000)
_message_ids = itertools.count(1)


@dataclass
class User:
    id: int
    first_name: str = "Test"
    language_code: str | None = "ru"

    def as_dict(self) -> dict:
        data = {"id": self.id, "is_bot": False, "first_name": self.first_name}
        if self.language_code:
            data["language_code"] = self.language_code
        return data


class BotWorld:
    """One bot: the Dispatcher with all routers, the outbox dispatcher and the stand-in behind them."""

    def __init__(self, ctx, standin, *, storage=None, i18n=None):
        self.ctx, self.standin = ctx, standin
        self.i18n = i18n or make_i18n()
        self.bot: Bot = create_bot(TOKEN, standin.base_url, timeout=5)
        self.dp: Dispatcher = create_dispatcher(ctx, self.i18n, storage)
        self.renderer = OutboxRenderer(ctx, self.i18n)
        self.dispatcher = OutboxDispatcher(ctx, self.bot, self.renderer, worker_id="test",
                                           rate_global=1000, rate_per_chat=1000)

    async def close(self) -> None:
        await close_bot(self.bot)

    # --- what users do ----------------------------------------------------------------------------------

    def _message(self, user: User, **content) -> dict:
        return {"message_id": next(_message_ids), "date": int(dt.datetime.now(dt.UTC).timestamp()),
                "chat": {"id": user.id, "type": "private", "first_name": user.first_name},
                "from": user.as_dict(), **content}

    async def feed(self, update: dict) -> dict:
        update.setdefault("update_id", next(_update_ids))
        await self.dp.feed_raw_update(self.bot, update)
        return update

    async def send(self, user: User, text: str) -> dict:
        entities = []
        if text.startswith("/"):
            entities = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
        return await self.feed({"message": self._message(user, text=text, entities=entities)})

    async def send_content(self, user: User, **content) -> dict:
        return await self.feed({"message": self._message(user, **content)})

    async def share_contact(self, user: User, phone: str, owner_id: int | None = None) -> dict:
        owner = user.id if owner_id is None else owner_id
        contact = {"phone_number": phone, "first_name": user.first_name, "user_id": owner}
        return await self.send_content(user, contact=contact)

    async def press(self, user: User, data: str, message_id: int | None = None, text: str = "…",
                    markup: dict | None = None) -> dict:
        message = self._message(user, text=text)
        if message_id is not None:
            message["message_id"] = message_id
        if markup is not None:  # the buttons the message shows (the bot may keep some of them)
            message["reply_markup"] = markup
        message["from"] = {"id": BOT_ID, "is_bot": True, "first_name": "Rastau"}
        return await self.feed({"callback_query": {"id": str(next(_update_ids)), "from": user.as_dict(),
                                                   "chat_instance": "ci", "data": data, "message": message}})

    async def deliver(self) -> int:
        """Run the outbox dispatcher until nothing is due (what the scheduler's tick does every second)."""
        return await self.dispatcher.drain()


async def close_bot(bot: Bot) -> None:
    """Close the bot's HTTP session. aiogram's own ``session.close()`` then sleeps 250 ms so that TLS connections
    can shut down; the stand-ins speak plain HTTP on 127.0.0.1, and that sleep was a quarter of a second of every
    bot test."""
    client = await bot.session.create_session()  # the open aiohttp session (a new one if none was opened yet)
    await client.close()


async def visit(ctx, world_, patient, minutes_from_now: int, mode: str = "in_person", minutes: int = 20):
    """A visit the clinic registers for `patient` with the clinic_world's doctor, starting this many minutes
    from the test clock's now (negative: in the past)."""
    return await register_visit(ctx, clinic_id=world_.clinic.id, doctor_id=world_.doctor.id, patient_id=patient.id,
                                start=ctx.clock.now() + dt.timedelta(minutes=minutes_from_now),
                                duration=dt.timedelta(minutes=minutes), mode=mode, service_code="B01.047.001")


def buttons(markup) -> list[tuple[str, str]]:
    """(text, callback_data or 'contact') of an inline or reply keyboard, as the stand-in recorded it."""
    if not markup:
        return []
    if isinstance(markup, str):
        markup = json.loads(markup)
    rows = markup.get("inline_keyboard") or markup.get("keyboard") or []
    out = []
    for row in rows:
        for b in row:
            out.append((b["text"], b.get("callback_data") or ("contact" if b.get("request_contact") else "")))
    return out


def texts_to(standin, chat_id: int) -> list[str]:
    return [m.text or "" for m in standin.messages_to(chat_id)]


def last_to(standin, chat_id: int):
    sent = standin.messages_to(chat_id)
    assert sent, f"nothing was sent to {chat_id}"
    return sent[-1]


def markup_of(message):
    return getattr(message, "reply_markup", None)


def callback_answers(standin) -> list[str | None]:
    return [params.get("text") for method, params in standin.calls if method.lower() == "answercallbackquery"]


async def link(world: BotWorld, user: User, phone: str, language: str) -> None:
    """The whole onboarding: /start, language button, own contact."""
    await world.send(user, "/start")
    await world.press(user, f"lang:{language}")
    await world.share_contact(user, phone)


async def say_not_there(world: BotWorld, user: User, visit_id: int) -> dict:
    """❌ and then «Yes, I wasn't there» on the one confirmation it asks for (issue 17); the second press's update."""
    await world.press(user, f"ans:no:{visit_id}")
    return await world.press(user, f"sure:yes:{visit_id}:0")
