"""A minimal Bot API server on 127.0.0.1 for the bot tests, until tests/standin/botapi.py lands.

Swap: the ``standin`` fixture in tests/bot/conftest.py is the only place that names this class. It speaks
real HTTP (JSON and multipart), records every sent message, and serves queued updates to getUpdates.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field

from aiohttp import web

SENDING = {"sendmessage", "senddocument", "editmessagetext", "editmessagereplymarkup"}


@dataclass
class Sent:
    method: str
    chat_id: int | None
    text: str | None
    reply_markup: dict | None
    document: tuple[str, bytes] | None = None
    at: float = field(default_factory=time.monotonic)


class MinimalBotApi:
    def __init__(self, bot_id: int = 424242, username: str = "rastau_test_bot"):
        self.bot_id, self.username = bot_id, username
        self.sent: list[Sent] = []
        self.calls: list[tuple[str, dict]] = []
        self._updates: asyncio.Queue[dict] = asyncio.Queue()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        await self._runner.cleanup()

    def messages_to(self, chat_id: int) -> list[Sent]:
        return [m for m in self.sent if m.chat_id == chat_id]

    def push_update(self, update: dict) -> None:
        """Queue an update for the bot's next getUpdates (long polling)."""
        self._updates.put_nowait(update)

    async def _params(self, request: web.Request) -> tuple[dict, tuple[str, bytes] | None]:
        if request.content_type.startswith("multipart"):
            params, document = {}, None
            async for part in await request.multipart():
                data = await part.read()
                if part.filename:
                    document = (part.filename, bytes(data))
                else:
                    params[part.name] = data.decode()
            return params, document
        if request.content_type == "application/json":
            return await request.json(), None
        return dict(await request.post()), None

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"].lower()
        params, document = await self._params(request)
        self.calls.append((method, params))
        if method == "getme":
            return _ok({"id": self.bot_id, "is_bot": True, "first_name": "Rastau", "username": self.username})
        if method == "getupdates":
            return _ok(await self._next_updates(float(params.get("timeout") or 0)))
        if method in SENDING:
            markup = params.get("reply_markup")
            chat = int(params["chat_id"]) if params.get("chat_id") else None
            text = params.get("text") or params.get("caption")
            self.sent.append(Sent(request.match_info["method"], chat, text,
                                  json.loads(markup) if isinstance(markup, str) and markup else markup, document))
            return _ok({"message_id": next(self._ids), "date": int(time.time()),
                        "chat": {"id": chat or 0, "type": "private"}, "text": text or ""})
        return _ok(True)

    async def _next_updates(self, timeout: float) -> list[dict]:
        try:
            first = await asyncio.wait_for(self._updates.get(), timeout=min(timeout, 1.0) or 0.01)
        except asyncio.TimeoutError:
            return []
        batch = [first]
        while not self._updates.empty():
            batch.append(self._updates.get_nowait())
        return batch


def _ok(result) -> web.Response:
    return web.json_response({"ok": True, "result": result})
