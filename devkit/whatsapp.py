"""A WhatsApp Business Cloud API stand-in on 127.0.0.1 that Rastau's WhatsApp client talks HTTP to.

It answers the Graph-style ``POST /{version}/{phone_number_id}/messages`` (text, template, interactive) the way the
Cloud API does, and pushes signed webhooks (``X-Hub-Signature-256``: HMAC-SHA256 of the raw body with the app
secret) to the bot: patients' messages and button presses, and the statuses of what was sent (sent, delivered,
read, failed). It keeps the rules that shape the design:

- the 24-hour customer-service window: free-form text or interactive messages to someone who has not written in
  the last 24 hours are accepted and then fail by webhook with 131047 (re-engagement message), as the real API does;
- templates: an unknown name or language is refused at once with 132001, wrong parameters with 132000;
- a number with no WhatsApp account: accepted, then failed by webhook with 131026 (message undeliverable);
- limits (when ``enforce_limits``): messages per second per business number (130429) and per recipient (131056);
- faults on demand: 5xx, answers too slow, dropped connections, and any of the error codes above.

    python -m devkit.whatsapp --port 8085 --webhook http://127.0.0.1:8081/whatsapp/webhook --app-secret S
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import itertools
import json
import random
import secrets
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

GRAPH_VERSION = "v21.0"
WINDOW_S = 24 * 3600.0
FAULT_KINDS = ("500", "slow", "drop", "130429", "131056", "131047", "131026", "132001", "190")
# code: (HTTP status, title) of the errors the API answers at once
_SYNC_ERRORS = {
    "130429": (400, "Rate limit hit"),
    "131056": (400, "(Business Account, Consumer Account) pair rate limit hit"),
    "132001": (404, "Template name does not exist in the translation"),
    "132000": (400, "Number of parameters does not match the expected number of params"),
    "131009": (400, "Parameter value is not valid"),
    "190": (401, "Invalid OAuth access token"),
    "100": (400, "Invalid parameter"),
}
# code: title of the errors that arrive later, as a "failed" status webhook
_ASYNC_ERRORS = {
    "131047": "Re-engagement message",
    "131026": "Message undeliverable",
}


def signature(app_secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` header Meta puts on a webhook."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class WaSent:
    """A message the stand-in accepted (whether or not it is delivered later)."""
    wamid: str
    to: str
    type: str  # text | template | interactive
    body: dict[str, Any]
    status: str = "accepted"  # then sent, delivered, read, or failed
    error: int | None = None
    at: float = field(default_factory=time.monotonic)

    @property
    def text(self) -> str:
        """What the patient would read, roughly: the text, the interactive body, or the template's parameters."""
        if self.type == "text":
            return str(self.body["text"]["body"])
        if self.type == "interactive":
            return str(self.body["interactive"]["body"]["text"])
        params = [p.get("text", "") for c in self.body["template"].get("components", [])
                  if c.get("type") == "body" for p in c.get("parameters", [])]
        return " ".join([self.body["template"]["name"], *params])

    @property
    def template(self) -> tuple[str, str] | None:
        if self.type != "template":
            return None
        return self.body["template"]["name"], self.body["template"]["language"]["code"]

    def button_payloads(self) -> list[str]:
        """Quick-reply payloads of a template, or reply-button ids of an interactive message."""
        if self.type == "interactive":
            return [b["reply"]["id"] for b in self.body["interactive"].get("action", {}).get("buttons", [])]
        return [p["payload"] for c in self.body.get("template", {}).get("components", [])
                if c.get("type") == "button" and c.get("sub_type") == "quick_reply"
                for p in c.get("parameters", []) if p.get("type") == "payload"]


@dataclass
class Template:
    """An approved template: its category and how many body parameters it takes."""
    category: str  # AUTHENTICATION | UTILITY | MARKETING
    body_params: int


@dataclass
class _Fault:
    kind: str


class WhatsAppStandIn:
    """The Cloud API on 127.0.0.1, with a recorder, the webhook pusher, and a fault injector."""

    def __init__(self, *, access_token: str = "wa-test-token", app_secret: str = "wa-test-secret",
                 phone_number_id: str = "1000001", webhook_url: str | None = None, port: int = 0,
                 templates: dict[tuple[str, str], Template] | None = None, enforce_limits: bool = False,
                 limit_per_second: int = 80, pair_cap: int = 1, pair_span: float = 6.0,
                 auto_statuses: tuple[str, ...] = ("sent", "delivered"), slow_seconds: float = 65.0,
                 clock: Callable[[], float] = time.time, echo: Callable[[str], None] | None = None,
                 pace_clock: Callable[[], float] = time.monotonic):
        """``clock`` (wall time, seconds) tells the 24-hour window and webhook timestamps; tests pass their own.
        ``pace_clock`` stamps each accepted send and counts Meta's limits: a test pacing sends on a faster clock
        hands the stand-in the same one."""
        self.access_token, self.app_secret, self.phone_number_id = access_token, app_secret, phone_number_id
        self.webhook_url, self.port = webhook_url, port
        self.templates: dict[tuple[str, str], Template] = dict(templates or {})
        self.enforce_limits, self.limit_per_second = enforce_limits, limit_per_second
        self.pair_cap, self.pair_span = pair_cap, pair_span
        self.auto_statuses, self.slow_seconds = auto_statuses, slow_seconds
        self.clock, self.echo, self.pace_clock = clock, echo, pace_clock
        self.sent: list[WaSent] = []
        self.refused: list[tuple[str, int]] = []  # (to, error code) of requests answered with an error
        self.webhook_answers: list[int] = []  # HTTP status of each webhook the bot was sent
        self.limit_violations = 0
        self.base_url = ""
        self.users: set[str] = set()  # wa_ids that have WhatsApp
        self._last_inbound: dict[str, float] = {}
        self._faults: list[_Fault] = []
        self._chaos: tuple[random.Random, list[tuple[str, float]]] | None = None
        self._recent: deque[float] = deque()
        self._recent_by_pair: dict[str, deque[float]] = defaultdict(deque)
        self._ids = itertools.count(1)
        self._pending: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{version}/{phone_number_id}/messages", self._messages)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        self._closing.set()
        await self.settle()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def settle(self) -> None:
        """Wait until every webhook queued so far has been answered by the bot."""
        while self._pending:
            batch = list(self._pending)
            await asyncio.gather(*batch, return_exceptions=True)
            # Python 3.12's gather of tasks already done returns without yielding to the loop, so the callbacks
            # that discard them from the set never ran: this loop spun forever (hung tests on PostgreSQL)
            self._pending.difference_update(batch)

    # --- what a test arranges -----------------------------------------------------------------------------

    def add_user(self, wa_id: str) -> None:
        """This number has a WhatsApp account (others fail with 131026)."""
        self.users.add(_digits(wa_id))

    def add_template(self, name: str, language: str, category: str = "UTILITY", body_params: int = 0) -> None:
        self.templates[(name, language)] = Template(category, body_params)

    def fail_next(self, n: int, kind: str) -> None:
        """Answer the next ``n`` sends with a fault: "500", "slow", "drop", or an error code."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {FAULT_KINDS}")
        self._faults.extend([_Fault(kind)] * n)

    def random_faults(self, seed: int, **odds: float) -> None:
        """Chaos: each send independently fails with these odds, reproducibly from ``seed``; keys are fault kinds
        ("500", "slow", "drop", "130429", ...), e.g. ``random_faults(7, **{"500": 0.1, "130429": 0.05})``. No odds
        turns it off."""
        unknown = set(odds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; kinds are {FAULT_KINDS}")
        if sum(odds.values()) > 1:
            raise ValueError("fault probabilities add up to more than 1")
        self._chaos = (random.Random(seed), list(odds.items())) if any(odds.values()) else None

    def _draw(self) -> _Fault | None:
        if self._chaos is None:
            return None
        rng, odds = self._chaos
        roll = rng.random()
        for kind, p in odds:
            if roll < p:
                return _Fault(kind)
            roll -= p
        return None

    def in_window(self, wa_id: str) -> bool:
        last = self._last_inbound.get(_digits(wa_id))
        return last is not None and self.clock() - last < WINDOW_S

    # --- what the patient does (each becomes a signed webhook to the bot) ---------------------------------

    async def user_writes(self, wa_id: str, text: str, *, name: str = "Patient") -> str:
        """The patient sends a text: their 24-hour window opens. Returns the message id."""
        return await self._inbound(wa_id, name, {"type": "text", "text": {"body": text}})

    async def user_taps(self, wa_id: str, sent: WaSent, payload: str, title: str = "") -> str:
        """The patient taps a button under ``sent``: a template's quick reply or an interactive reply button."""
        if sent.type == "interactive":
            content: dict[str, Any] = {"type": "interactive", "interactive": {
                "type": "button_reply", "button_reply": {"id": payload, "title": title or payload}}}
        else:
            content = {"type": "button", "button": {"payload": payload, "text": title or payload}}
        content["context"] = {"from": self.phone_number_id, "id": sent.wamid}
        return await self._inbound(wa_id, "Patient", content)

    async def read(self, sent: WaSent) -> None:
        """The patient opened the message: a "read" status."""
        await self._status(sent, "read")

    async def _inbound(self, wa_id: str, name: str, content: dict[str, Any]) -> str:
        wa_id = _digits(wa_id)
        self.users.add(wa_id)
        self._last_inbound[wa_id] = self.clock()
        message_id = f"wamid.IN{next(self._ids):08d}{secrets.token_hex(4)}"
        message = {"from": wa_id, "id": message_id, "timestamp": str(int(self.clock())), **content}
        value = {"messaging_product": "whatsapp", "metadata": self._metadata(),
                 "contacts": [{"profile": {"name": name}, "wa_id": wa_id}], "messages": [message]}
        await self.post_webhook(_envelope(value))
        return message_id

    # --- webhooks ------------------------------------------------------------------------------------------

    async def post_webhook(self, payload: dict[str, Any] | bytes, *, sign_with: str | None = None,
                           header: str | None = None) -> int:
        """POST one webhook to the bot, signed with the app secret (or ``sign_with``, or exactly ``header``; an
        empty ``header`` sends none). Answers the bot's HTTP status. Also what a test forges or replays with."""
        if self.webhook_url is None or self._session is None:
            return 0
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        sig = header if header is not None else signature(sign_with or self.app_secret, body)
        if sig:
            headers["X-Hub-Signature-256"] = sig
        async with self._session.post(self.webhook_url, data=body, headers=headers) as response:
            await response.read()
            self.webhook_answers.append(response.status)
            return response.status

    async def _status(self, sent: WaSent, status: str, error: int | None = None) -> None:
        if sent.status in ("failed", "read") or (status == "sent" and sent.status != "accepted"):
            return
        sent.status, sent.error = status, error
        entry: dict[str, Any] = {"id": sent.wamid, "status": status, "timestamp": str(int(self.clock())),
                                 "recipient_id": sent.to}
        if error is not None:
            entry["errors"] = [{"code": error, "title": _ASYNC_ERRORS.get(str(error), "error")}]
        if self.echo:
            self.echo(f"status {status}{f' ({error})' if error else ''} → {sent.to} {sent.wamid}")
        await self.post_webhook(_envelope({"messaging_product": "whatsapp", "metadata": self._metadata(),
                                           "statuses": [entry]}))

    def _later(self, sent: WaSent, error: int | None) -> None:
        """The statuses of an accepted message, pushed after the send's answer, in order."""
        async def push() -> None:
            await asyncio.sleep(0)
            if error is not None:
                await self._status(sent, "failed", error)
                return
            for status in self.auto_statuses:
                await self._status(sent, status)
        if self.webhook_url is None:
            sent.status, sent.error = ("failed", error) if error is not None else (
                self.auto_statuses[-1] if self.auto_statuses else "accepted", None)
            return
        task = asyncio.ensure_future(push())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _metadata(self) -> dict[str, str]:
        return {"display_phone_number": "77000000000", "phone_number_id": self.phone_number_id}

    # --- serving -------------------------------------------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.access_token}":
            return _error("190")
        if request.match_info["phone_number_id"] != self.phone_number_id:
            return _error("100", "Unsupported post request: unknown phone number id")
        try:
            body = await request.json()
        except ValueError:
            return _error("100", "body is not JSON")
        to, kind = _digits(str(body.get("to", ""))), body.get("type", "text")
        if body.get("messaging_product") != "whatsapp" or not to or kind not in ("text", "template", "interactive"):
            return _error("100")
        fault = self._faults.pop(0) if self._faults else self._draw()
        if fault is not None:
            if fault.kind == "slow":
                await self._sleep(self.slow_seconds)
                return web.json_response({"error": {"code": 2, "message": "Service temporarily unavailable"}},
                                         status=503)
            if fault.kind == "drop":
                assert request.transport is not None
                request.transport.close()
                raise asyncio.CancelledError
            if fault.kind == "500":
                return web.json_response({"error": {"code": 1, "message": "An unknown error occurred"}},
                                         status=500)
            if fault.kind in _SYNC_ERRORS:
                self.refused.append((to, int(fault.kind)))
                return _error(fault.kind)
        if kind == "template" and (refusal := self._template_refusal(body.get("template") or {})):
            self.refused.append((to, int(refusal)))
            return _error(refusal)
        if self.enforce_limits and (limit := self._over_limit(to)):
            self.limit_violations += 1
            self.refused.append((to, int(limit)))
            return _error(limit)
        sent = WaSent(f"wamid.OUT{next(self._ids):08d}{secrets.token_hex(6)}", to, kind, body, at=self.pace_clock())
        self.sent.append(sent)
        if self.enforce_limits:
            now = sent.at
            self._recent.append(now)
            self._recent_by_pair[to].append(now)
        if self.echo:
            self.echo(f"{kind} → {to}: {sent.text}")
        error: int | None = None
        if fault is not None and fault.kind in _ASYNC_ERRORS:
            error = int(fault.kind)
        elif to not in self.users:
            error = 131026
        elif kind != "template" and not self.in_window(to):
            error = 131047
        self._later(sent, error)
        return web.json_response({"messaging_product": "whatsapp", "contacts": [{"input": body["to"], "wa_id": to}],
                                  "messages": [{"id": sent.wamid}]})

    def _template_refusal(self, template: dict[str, Any]) -> str | None:
        name, language = template.get("name"), (template.get("language") or {}).get("code")
        known = self.templates.get((str(name), str(language)))
        if known is None:
            return "132001"
        params = [p for c in template.get("components", []) if c.get("type") == "body" for p in c.get("parameters", [])]
        if len(params) != known.body_params:
            return "132000"
        if any(not str(p.get("text", "")).strip() or len(str(p.get("text"))) > 1024 for p in params):
            return "131009"
        return None

    def _over_limit(self, to: str) -> str | None:
        now = self.pace_clock()
        pair = self._recent_by_pair[to]
        while self._recent and self._recent[0] <= now - 1.0:
            self._recent.popleft()
        while pair and pair[0] <= now - self.pair_span:
            pair.popleft()
        if len(self._recent) >= self.limit_per_second:
            return "130429"
        if len(pair) >= self.pair_cap:
            return "131056"
        return None

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            pass

    # --- what a test inspects ------------------------------------------------------------------------------

    def messages_to(self, wa_id: str) -> list[WaSent]:
        wa_id = _digits(wa_id)
        return [m for m in self.sent if m.to == wa_id]

    def max_rate(self, window: float = 1.0) -> int:
        times = sorted(m.at for m in self.sent)
        best, start = 0, 0
        for end, at in enumerate(times):
            while at - times[start] >= window:
                start += 1
            best = max(best, end - start + 1)
        return best


def _digits(number: str) -> str:
    return "".join(ch for ch in number if ch.isdigit())


def _envelope(value: dict[str, Any]) -> dict[str, Any]:
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "WABA-1", "changes": [{"value": value, "field": "messages"}]}]}


def _error(code: str, message: str | None = None) -> web.Response:
    status, title = _SYNC_ERRORS[code]
    return web.json_response({"error": {"message": message or title, "type": "OAuthException", "code": int(code),
                                        "error_data": {"messaging_product": "whatsapp", "details": title},
                                        "fbtrace_id": secrets.token_hex(8)}}, status=status)


# --- standalone ---------------------------------------------------------------------------------------------

# Rastau's templates as approved (names and languages as in .env.example's defaults): (name, language, category,
# body parameters)
RASTAU_TEMPLATES = tuple((name, language, category, params) for name, category, params in (
    ("rastau_code", "AUTHENTICATION", 1), ("rastau_visit_check", "UTILITY", 3), ("rastau_notice", "UTILITY", 1))
    for language in ("kk", "ru"))


def add_rastau_templates(api: WhatsAppStandIn) -> None:
    for name, language, category, params in RASTAU_TEMPLATES:
        api.add_template(name, language, category, params)


async def _serve(args: argparse.Namespace) -> None:
    api = WhatsAppStandIn(port=args.port, webhook_url=args.webhook, app_secret=args.app_secret,
                          access_token=args.access_token, phone_number_id=args.phone_number_id,
                          echo=lambda line: print(time.strftime("%H:%M:%S"), line, flush=True))
    add_rastau_templates(api)
    await api.start()
    print(f"WhatsApp Cloud API stand-in on {api.base_url}; webhooks to {args.webhook}\n"
          f"Type 'WA_ID text' to write to the bot as that number, or 'WA_ID !tap PAYLOAD'.", flush=True)
    loop = asyncio.get_running_loop()
    taps: set[asyncio.Future[str]] = set()

    def typed() -> None:
        line = sys.stdin.readline()
        if not line:
            loop.remove_reader(sys.stdin.fileno())
            return
        wa_id, _, text = line.strip().partition(" ")
        if text.startswith("!tap "):
            last = api.messages_to(wa_id)
            if last:
                taps.add(asyncio.ensure_future(api.user_taps(wa_id, last[-1], text[5:])))
        elif text:
            taps.add(asyncio.ensure_future(api.user_writes(wa_id, text)))

    loop.add_reader(sys.stdin.fileno(), typed)
    try:
        await asyncio.Event().wait()
    finally:
        await api.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devkit.whatsapp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8085)
    parser.add_argument("--webhook", default="http://127.0.0.1:8081/whatsapp/webhook")
    parser.add_argument("--app-secret", default="wa-local-secret")
    parser.add_argument("--access-token", default="wa-local-token")
    parser.add_argument("--phone-number-id", default="1000001")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
