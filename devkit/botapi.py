"""A Telegram Bot API stand-in on 127.0.0.1 that the real aiogram ``Bot`` talks HTTP to.

The tests, the newcomer demo and the benchmarks run the bot against it instead of Telegram: it records
every message the bot sends, serves queued updates to long polling, and misbehaves on demand the way
Telegram does (429 with ``retry_after``, 5xx, 403 for a user who blocked the bot, 400, answers slower
than the client waits, connections dropped without an answer), so delivery guarantees can be proven
without an account or the internet. Optionally it enforces Telegram's own send limits, so a test can show
the dispatcher never trips them.

    python -m devkit.botapi --port 8082   # standalone: prints what the bot sends; typed lines become updates
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import random
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

SENDING = {"sendmessage", "senddocument", "editmessagetext", "editmessagereplymarkup"}
FAULT_KINDS = ("429", "500", "403", "400", "slow", "drop")
_ERRORS = {
    "429": (429, "Too Many Requests: retry after {retry_after}"),
    "500": (500, "Internal Server Error"),
    "403": (403, "Forbidden: bot was blocked by the user"),
    "400": (400, "Bad Request: chat not found"),
}
_RESULTS = {  # what Telegram answers to calls that are neither sends nor polling
    "getwebhookinfo": {"url": "", "has_custom_certificate": False, "pending_update_count": 0},
}


@dataclass
class Sent:
    """A message the stand-in accepted: what the user's chat would show."""
    method: str
    chat_id: int | None
    text: str | None
    reply_markup: dict | None
    document: tuple[str, bytes] | None = None  # (filename, bytes)
    message_id: int = 0
    at: float = field(default_factory=time.monotonic)


@dataclass
class Attempt:
    """One request as it arrived, and how it was answered: "ok" or a fault kind."""
    method: str
    chat_id: int | None
    outcome: str
    at: float = field(default_factory=time.monotonic)


@dataclass
class _Fault:
    kind: str
    method: str | None = None  # lower-case method name; None means "any send"
    retry_after: int = 1


@dataclass
class _Chaos:
    rng: random.Random
    odds: list[tuple[str, float]]
    retry_after: int

    def draw(self) -> str | None:
        roll = self.rng.random()
        for kind, p in self.odds:
            if roll < p:
                return kind
            roll -= p
        return None


class BotApiStandIn:
    """The Bot API on 127.0.0.1 with a recorder and a fault injector.

    Faults apply to sends (sendMessage, sendDocument, edits) unless a method is named; a failed request is
    recorded in ``requests`` but never in ``sent``, since Telegram would not have delivered it.
    """

    def __init__(self, bot_id: int | None = None, username: str = "rastau_test_bot", *, port: int = 0,
                 enforce_limits: bool = False, limit_global: int = 30, limit_per_chat: int = 1,
                 slow_seconds: float = 65.0, echo: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        """``clock`` stamps each request and send and counts the limits: a test pacing sends on a faster clock
        hands the stand-in the same one. ``slow_seconds`` stays real: it is measured against the client's timeout."""
        self.bot_id, self.username, self.port = bot_id, username, port
        self.clock = clock
        self.enforce_limits, self.limit_global, self.limit_per_chat = enforce_limits, limit_global, limit_per_chat
        self.slow_seconds = slow_seconds  # past aiogram's default 60 s timeout; tests use shorter client timeouts
        self.echo = echo
        self.sent: list[Sent] = []
        self.requests: list[Attempt] = []
        self.calls: list[tuple[str, dict]] = []  # (lower-case method, params) of every request
        self.limit_violations = 0  # sends refused with 429 because they broke Telegram's limits
        # the command menus set, by scope: ("default", None, language or ""), ("chat", chat_id, language or "");
        # a deleteMyCommands removes its scope's entry, as Telegram falls back to the next wider scope
        self.menus: dict[tuple[str, int | None, str], list[tuple[str, str]]] = {}
        self.base_url = ""
        self._bots: dict[str, dict] = {}
        self._faults: list[_Fault] = []
        self._chaos: _Chaos | None = None
        self._blocked: set[int] = set()
        self._recent: deque[float] = deque()
        self._recent_by_chat: dict[int, deque[float]] = defaultdict(deque)
        self._updates: list[dict] = []
        self._last_update_id = 0
        self._update_arrived = asyncio.Event()
        self._message_ids = itertools.count(1)
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=60 * 1024 * 1024)  # Telegram takes documents up to 50 MB
        app.router.add_post("/bot{token}/{method}", self._handle)
        app.router.add_get("/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self._closing.set()  # wakes long polls and slow answers, so shutdown does not wait for them
        if self._runner is not None:
            await self._runner.cleanup()

    # --- what a test arranges -----------------------------------------------------------------------------

    def add_bot(self, token: str, username: str | None = None) -> None:
        """Accept this token (its numeric prefix is the bot's id). Once any bot is added, others get 401."""
        self._bots[token] = {"id": _id_of(token), "is_bot": True, "first_name": "Rastau",
                             "username": username or self.username}

    def push_update(self, update: dict) -> dict:
        """Queue an update for the bot's next getUpdates (long polling)."""
        update.setdefault("update_id", self._last_update_id + 1)
        self._last_update_id = max(self._last_update_id, update["update_id"])
        self._updates.append(update)
        self._update_arrived.set()
        self._update_arrived = asyncio.Event()
        return update

    def fail_next(self, n: int, kind: str, method: str | None = None, retry_after: int | None = None) -> None:
        """Answer the next ``n`` sends (or calls of ``method``) with a fault instead of delivering them."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {FAULT_KINDS}")
        fault = _Fault(kind, method.lower() if method else None, retry_after or 1)
        self._faults.extend([fault] * n)

    def block_user(self, chat_id: int) -> None:
        """From now on every send to this chat gets 403, as when the user blocked the bot."""
        self._blocked.add(chat_id)

    def random_faults(self, seed: int, *, p429: float = 0.0, p500: float = 0.0, pslow: float = 0.0,
                      pdrop: float = 0.0, retry_after: int = 1) -> None:
        """Chaos: each send independently fails with these odds (reproducibly, from ``seed``); all 0 turns it off."""
        odds = [("429", p429), ("500", p500), ("slow", pslow), ("drop", pdrop)]
        if sum(p for _, p in odds) > 1:
            raise ValueError("fault probabilities add up to more than 1")
        self._chaos = _Chaos(random.Random(seed), odds, retry_after) if any(p for _, p in odds) else None

    # --- what a test inspects -----------------------------------------------------------------------------

    def messages_to(self, chat_id: int) -> list[Sent]:
        return [m for m in self.sent if m.chat_id == chat_id]

    def requests_to(self, chat_id: int) -> int:
        """How many requests addressed this chat, delivered or not."""
        return sum(1 for a in self.requests if a.chat_id == chat_id)

    def max_rate(self, window: float = 1.0) -> int:
        """The most successful sends in any sliding window, overall (Telegram's cap is 30 per second)."""
        return _densest([m.at for m in self.sent], window)

    def max_rate_per_chat(self, window: float = 1.0) -> int:
        """The most successful sends to one chat in any sliding window (Telegram's cap is 1 per second)."""
        by_chat: dict[int | None, list[float]] = defaultdict(list)
        for m in self.sent:
            by_chat[m.chat_id].append(m.at)
        return max((_densest(times, window) for times in by_chat.values()), default=0)

    # --- serving ------------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        name = method.lower()
        params, document = await _read_params(request)
        self.calls.append((name, params))
        bot = self._bot_for(request.match_info["token"])
        chat_id = _chat_id(params.get("chat_id"))
        if bot is None:
            self._record(method, chat_id, "401")
            return _error(401, "Unauthorized")
        fault = self._fault_for(name, chat_id)
        self._record(method, chat_id, fault.kind if fault else "ok")
        if fault:
            return await self._answer_fault(request, fault)
        if name == "getupdates":
            return _ok(await self._updates_after(params))
        if name == "getme":
            return _ok(bot)
        if name in ("setmycommands", "deletemycommands"):
            return self._menu(name, params)
        if name in SENDING:
            if chat_id is None:  # an inline message's edit has no chat; a send without a chat is refused
                return _ok(True) if params.get("inline_message_id") else _error(400, "Bad Request: chat not found")
            return _ok(self._deliver(method, chat_id, params, document, bot))
        return _ok(_RESULTS.get(name, True))

    def menu_for(self, chat_id: int, language: str | None = None) -> list[str]:
        """The command names a chat's menu shows: its own scope's, else the default (for its language)."""
        for key in (("chat", chat_id, language or ""), ("chat", chat_id, ""),
                    ("default", None, language or ""), ("default", None, "")):
            if key in self.menus:
                return [name for name, _ in self.menus[key]]
        return []

    def _menu(self, name: str, params: dict[str, Any]) -> web.Response:
        scope = params.get("scope") or {"type": "default"}
        if isinstance(scope, str):
            scope = json.loads(scope)
        kind = scope.get("type", "default")
        if kind not in ("default", "chat"):
            return _ok(True)  # other scopes (all_private_chats …) are not used by the bot
        key = (kind, _chat_id(scope.get("chat_id")), params.get("language_code") or "")
        if name == "deletemycommands":
            self.menus.pop(key, None)
            return _ok(True)
        commands = params.get("commands") or []
        if isinstance(commands, str):
            commands = json.loads(commands)
        if len(commands) > 100 or any(
                not 1 <= len(c.get("command", "")) <= 32 or not 1 <= len(c.get("description", "")) <= 256
                for c in commands):
            return _error(400, "Bad Request: BOT_COMMANDS_INVALID")
        self.menus[key] = [(c["command"], c["description"]) for c in commands]
        return _ok(True)

    def _bot_for(self, token: str) -> dict | None:
        if token in self._bots:
            return self._bots[token]
        if self._bots:
            return None
        return {"id": self.bot_id or _id_of(token), "is_bot": True, "first_name": "Rastau", "username": self.username}

    def _fault_for(self, name: str, chat_id: int | None) -> _Fault | None:
        """Queued faults first, then a blocked user, then chaos, then Telegram's limits."""
        for index, fault in enumerate(self._faults):
            if fault.method == name or (fault.method is None and name in SENDING):
                return self._faults.pop(index)
        if name not in SENDING:
            return None
        if chat_id in self._blocked:
            return _Fault("403")
        if self._chaos and (kind := self._chaos.draw()):
            return _Fault(kind, retry_after=self._chaos.retry_after)
        if self.enforce_limits and (wait := self._over_limit(chat_id)):
            self.limit_violations += 1
            return _Fault("429", retry_after=wait)
        return None

    def _over_limit(self, chat_id: int | None) -> int | None:
        """Seconds until a send to this chat would be within the limits; None if it is now."""
        now = self.clock()
        chat = self._recent_by_chat[chat_id]
        for times in (self._recent, chat):
            while times and times[0] <= now - 1.0:
                times.popleft()
        waits = [times[0] + 1.0 - now for times, cap in ((self._recent, self.limit_global),
                                                         (chat, self.limit_per_chat)) if len(times) >= cap]
        return max(1, math.ceil(max(waits))) if waits else None

    async def _answer_fault(self, request: web.Request, fault: _Fault) -> web.StreamResponse:
        if fault.kind == "slow":
            await self._sleep(self.slow_seconds)
            return _error(500, "Internal Server Error: answered too late")
        if fault.kind == "drop":
            request.transport.close()
            raise asyncio.CancelledError  # aiohttp then ends the request without writing an answer
        status, description = _ERRORS[fault.kind]
        parameters = {"retry_after": fault.retry_after} if fault.kind == "429" else None
        return _error(status, description.format(retry_after=fault.retry_after), parameters)

    def _deliver(self, method: str, chat_id: int, params: dict, document, bot: dict) -> dict:
        markup = params.get("reply_markup")
        if isinstance(markup, str):
            markup = json.loads(markup) if markup else None
        text = params.get("text") or params.get("caption")
        editing = method.lower().startswith("edit")
        message_id = int(params["message_id"]) if editing and params.get("message_id") else next(self._message_ids)
        now = self.clock()
        self.sent.append(Sent(method, chat_id, text, markup, document, message_id, now))
        if self.enforce_limits:
            self._recent.append(now)
            self._recent_by_chat[chat_id].append(now)
        if self.echo:
            self.echo(_describe(self.sent[-1]))
        chat = {"id": chat_id, "type": "private"} if chat_id > 0 else {"id": chat_id, "type": "supergroup",
                                                                        "title": "group"}
        message = {"message_id": message_id, "date": int(time.time()), "chat": chat,
                   "from": {k: bot[k] for k in ("id", "is_bot", "first_name", "username")}}
        if document:
            filename, data = document
            message["document"] = {"file_id": f"doc-{message_id}", "file_unique_id": f"u{message_id}",
                                   "file_name": filename, "file_size": len(data)}
            if text:
                message["caption"] = text
        elif text is not None:
            message["text"] = text
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            message["reply_markup"] = markup
        if editing:
            message["edit_date"] = message["date"]
        return message

    async def _updates_after(self, params: dict) -> list[dict]:
        """Telegram's long polling: updates below ``offset`` are confirmed and forgotten; wait up to ``timeout``."""
        offset = int(params.get("offset") or 0)
        if offset > 0:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        limit = int(params.get("limit") or 100)
        if not self._updates:
            await self._sleep(float(params.get("timeout") or 0), self._update_arrived)
        batch = self._updates[:limit]
        if batch and self.echo:
            self.echo(f"getUpdates → {len(batch)} update(s)")
        return batch

    async def _sleep(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        """Sleep, but no longer than until ``stop()`` (or ``wake``)."""
        waiters = [asyncio.ensure_future(e.wait()) for e in (self._closing, wake) if e is not None]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _record(self, method: str, chat_id: int | None, outcome: str) -> None:
        self.requests.append(Attempt(method, chat_id, outcome, self.clock()))
        if self.echo and outcome != "ok":
            self.echo(f"{method} to {chat_id}: answered with fault {outcome}")


def _densest(times: list[float], window: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def _id_of(token: str) -> int:
    prefix = token.split(":", 1)[0]
    return int(prefix) if prefix.isdigit() else 1


def _chat_id(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None  # absent, or a @channel username


async def _read_params(request: web.Request) -> tuple[dict, tuple[str, bytes] | None]:
    """Parameters from a JSON, urlencoded or multipart body (or the query string), and an uploaded file."""
    params: dict = dict(request.query)
    document = None
    if request.content_type.startswith("multipart/"):
        async for part in await request.multipart():
            data = await part.read()
            if part.filename:
                document = (part.filename, bytes(data))
            else:
                params[part.name] = data.decode()
    elif request.content_type == "application/json":
        params.update(await request.json())
    elif request.can_read_body:
        params.update(await request.post())
    return params, document


def _ok(result) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _error(status: int, description: str, parameters: dict | None = None) -> web.Response:
    body = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=status)


def _describe(message: Sent) -> str:
    what = f"📎 {message.document[0]} ({len(message.document[1])} bytes) " if message.document else ""
    buttons = [b["text"] for row in (message.reply_markup or {}).get("inline_keyboard", []) for b in row]
    return (f"{message.method} → chat {message.chat_id}: {what}{message.text or ''}"
            + (f"  [{' | '.join(buttons)}]" if buttons else ""))


# --- standalone ---------------------------------------------------------------------------------------------

HELP = """Bot API stand-in on {url}
Run the bot against it:  RASTAU_TELEGRAM_API_BASE={url} RASTAU_BOT_TOKEN=1:local .venv/bin/rastau-bot
Type a line to send it to the bot as user {user} ("/start" is a command). Also:
  !contact PHONE   share this user's own phone contact
  !press DATA      press a button (callback data) under the last message the bot sent
"""


class _Typist:
    """Turns lines typed in the terminal into updates from one user, so the bot can be tried by hand."""

    def __init__(self, api: BotApiStandIn, user_id: int, language: str):
        self.api = api
        self.user = {"id": user_id, "is_bot": False, "first_name": "Local", "language_code": language}
        self._message_ids = itertools.count(1)

    def message(self, **content) -> dict:
        return {"message_id": next(self._message_ids), "date": int(time.time()), "from": self.user,
                "chat": {"id": self.user["id"], "type": "private", "first_name": "Local"}, **content}

    def update_for(self, line: str) -> dict | None:
        if line.startswith("!contact "):
            contact = {"phone_number": line.split(None, 1)[1], "first_name": "Local", "user_id": self.user["id"]}
            return {"message": self.message(contact=contact)}
        if line.startswith("!press "):
            shown = self.api.messages_to(self.user["id"])
            if not shown:
                return None
            message = self.message(text=shown[-1].text or "")
            message["message_id"] = shown[-1].message_id
            return {"callback_query": {"id": str(time.time_ns()), "from": self.user, "chat_instance": "local",
                                       "data": line.split(None, 1)[1], "message": message}}
        command = line.startswith("/")
        entities = [{"type": "bot_command", "offset": 0, "length": len(line.split()[0])}] if command else []
        return {"message": self.message(text=line, entities=entities)}


async def _serve(port: int, user_id: int, language: str) -> None:
    api = BotApiStandIn(port=port, echo=lambda line: print(time.strftime("%H:%M:%S"), line, flush=True))
    await api.start()
    print(HELP.format(url=api.base_url, user=user_id), flush=True)
    typist = _Typist(api, user_id, language)
    loop = asyncio.get_running_loop()

    def typed() -> None:
        line = sys.stdin.readline()
        if not line:  # stdin closed: keep serving until interrupted
            loop.remove_reader(sys.stdin.fileno())
        elif line.strip() and (update := typist.update_for(line.strip())):
            api.push_update(update)

    loop.add_reader(sys.stdin.fileno(), typed)  # not a thread: Ctrl-C must not wait for a line
    try:
        await asyncio.Event().wait()
    finally:
        await api.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devkit.botapi", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument("--user-id", type=int, default=1001, help="the Telegram user typed lines come from")
    parser.add_argument("--language", default="ru", help="that user's Telegram app language")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args.port, args.user_id, args.language))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
