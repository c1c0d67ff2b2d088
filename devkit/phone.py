"""A Telegram user's phone, simulated: what they type and press goes to the Bot API stand-in as updates
(the bot fetches them by long polling, as from Telegram), and what the bot sends them lands in their inbox."""
from __future__ import annotations

import asyncio
import html
import itertools
import json
import re
import time
from dataclasses import dataclass, field

from devkit.botapi import BotApiStandIn, Sent

_query_ids = itertools.count(1)
_message_ids = itertools.count(1)
TAG = re.compile(r"<[^>]+>")


def plain(text: str | None) -> str:
    """The message as a person reads it: HTML tags gone, entities decoded."""
    return html.unescape(TAG.sub("", text or ""))


def buttons(message: Sent) -> list[tuple[str, str]]:
    markup = message.reply_markup
    if isinstance(markup, str):
        markup = json.loads(markup)
    rows = (markup or {}).get("inline_keyboard") or (markup or {}).get("keyboard") or []
    return [(b["text"], b.get("callback_data") or ("contact" if b.get("request_contact") else ""))
            for row in rows for b in row]


@dataclass
class Phone:
    api: BotApiStandIn
    user_id: int
    name: str
    phone_number: str
    language_code: str
    on_message: callable = None  # called with (phone, Sent) for each new message, e.g. to print it
    on_action: callable = None   # called with (phone, description) for what the user does
    seen: int = field(default=0)

    def _user(self) -> dict:
        return {"id": self.user_id, "is_bot": False, "first_name": self.name, "language_code": self.language_code}

    def _message(self, **content) -> dict:
        return {"message_id": next(_message_ids), "date": int(time.time()),
                "chat": {"id": self.user_id, "type": "private", "first_name": self.name},
                "from": self._user(), **content}

    def _push(self, update: dict, action: str) -> None:
        if self.on_action:
            self.on_action(self, action)
        self.api.push_update(update)  # the stand-in numbers updates in arrival order

    def type(self, text: str) -> None:
        command = text.startswith("/")
        entities = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}] if command else []
        self._push({"message": self._message(text=text, entities=entities)}, text)

    def share_contact(self) -> None:
        contact = {"phone_number": self.phone_number, "first_name": self.name, "user_id": self.user_id}
        self._push({"message": self._message(contact=contact)}, f"📱 {self.phone_number}")

    def press(self, message: Sent, data_prefix: str) -> None:
        """Press the first button of `message` whose callback data starts with `data_prefix`."""
        for text, data in buttons(message):
            if data.startswith(data_prefix):
                query = {"id": str(next(_query_ids)), "from": self._user(), "chat_instance": str(self.user_id),
                         "data": data, "message": {"message_id": message.message_id, "date": int(time.time()),
                                                   "chat": {"id": self.user_id, "type": "private"},
                                                   "text": message.text or ""}}
                self._push({"callback_query": query}, f"[{text}]")
                return
        raise LookupError(f"{self.name} sees no button '{data_prefix}…' on: {plain(message.text)[:80]}")

    def inbox(self) -> list[Sent]:
        return self.api.messages_to(self.user_id)

    async def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[Sent]:
        """The next `count` messages the bot sends this user (reported through on_message as they arrive)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.inbox()) < self.seen + count:
            if asyncio.get_running_loop().time() > deadline:
                got = [plain(m.text)[:60] for m in self.inbox()[self.seen:]]
                raise TimeoutError(f"{self.name} expected {count} new message(s), got {len(got)}: {got}")
            await asyncio.sleep(0.02)
        fresh = self.inbox()[self.seen:self.seen + count]
        self.seen += count
        for message in fresh:
            if self.on_message:
                self.on_message(self, message)
        return fresh

    async def settle(self, quiet: float = 0.3) -> list[Sent]:
        """Everything the bot sends until it has been quiet for `quiet` seconds."""
        fresh: list[Sent] = []
        while True:
            before = len(self.inbox())
            await asyncio.sleep(quiet)
            if len(self.inbox()) == before:
                break
        if len(self.inbox()) > self.seen:
            fresh = await self.wait_for(len(self.inbox()) - self.seen)
        return fresh
