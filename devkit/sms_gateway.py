"""An SMS gateway stand-in on 127.0.0.1 that bot/channels/sms.py (provider "generic") talks HTTP to.

Like devkit/botapi.py for Telegram: it records every SMS Rastau sends (``POST /messages`` with Basic auth, JSON
``{"from", "to", "text", "reference"}``, answered ``{"id"}``), counts segments, posts delivery reports and the
patients' replies to our webhook signed the way a configured gateway does (``X-Rastau-Timestamp`` and
``X-Rastau-Signature`` = hex HMAC-SHA256 of ``"<timestamp>." + body``), and misbehaves on demand: 5xx, answers
slower than the client waits, invalid numbers (400 ``invalid_number``) and rate limits (429 with Retry-After).

    python -m devkit.sms_gateway --port 8083   # standalone: prints each SMS
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

FAULT_KINDS = ("500", "slow", "invalid_number", "429")


@dataclass
class Sms:
    id: str
    to: str
    text: str
    sender: str
    reference: str
    at: float = field(default_factory=time.monotonic)


class SmsGatewayStandIn:
    def __init__(self, *, login: str = "rastau", password: str = "gateway-password", port: int = 0,
                 slow_seconds: float = 30.0, max_rate: float | None = None):
        """``max_rate``: sends per second the gateway accepts (more are answered 429), None for no limit."""
        self.login, self.password, self.port = login, password, port
        self.sent: list[Sms] = []
        self.attempts: list[tuple[str, str]] = []  # (to, outcome): "ok" or a fault kind
        self.invalid_numbers: set[str] = set()
        self.rate_limited = 0
        self.echo: Callable[[Sms], None] | None = None  # called with each SMS accepted (the crash harness kills then)
        self._faults: deque[str] = deque()
        self._slow = slow_seconds
        self._max_rate = max_rate
        self._recent: deque[float] = deque()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/messages", self._send)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # --- fault injection ---------------------------------------------------------------------------------------------

    def fail_next(self, n: int, kind: str) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {FAULT_KINDS}")
        self._faults.extend([kind] * n)

    def to(self, phone: str) -> list[Sms]:
        return [m for m in self.sent if m.to == phone]

    # --- the send API ------------------------------------------------------------------------------------------------

    async def _send(self, request: web.Request) -> web.Response:
        expected = "Basic " + base64.b64encode(f"{self.login}:{self.password}".encode()).decode()
        if not hmac.compare_digest(request.headers.get("Authorization", ""), expected):
            return web.json_response({"error": "unauthorized"}, status=401)
        try:
            body = await request.json()
            to, text = str(body["to"]), str(body["text"])
        except (ValueError, KeyError):
            return web.json_response({"error": "bad_request"}, status=400)
        fault = self._faults.popleft() if self._faults else None
        if fault is None and to in self.invalid_numbers:
            fault = "invalid_number"
        if fault is None and self._over_rate():
            fault = "429"
            self.rate_limited += 1
        self.attempts.append((to, fault or "ok"))
        if fault == "500":
            return web.json_response({"error": "internal"}, status=500)
        if fault == "slow":
            await asyncio.sleep(self._slow)
            return web.json_response({"error": "timeout"}, status=504)
        if fault == "invalid_number":
            return web.json_response({"error": "invalid_number"}, status=400)
        if fault == "429":
            return web.json_response({"error": "rate_limited"}, status=429, headers={"Retry-After": "1"})
        sms = Sms(id=f"sms-{next(self._ids)}", to=to, text=text, sender=str(body.get("from", "")),
                  reference=str(body.get("reference", "")))
        self.sent.append(sms)
        if self.echo is not None:
            self.echo(sms)
        return web.json_response({"id": sms.id}, status=201)

    def _over_rate(self) -> bool:
        if self._max_rate is None:
            return False
        now = time.monotonic()
        while self._recent and now - self._recent[0] > 1.0:
            self._recent.popleft()
        if len(self._recent) >= self._max_rate:
            return True
        self._recent.append(now)
        return False

    # --- to our webhook ----------------------------------------------------------------------------------------------

    @staticmethod
    def signed(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        signature = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        return {"X-Rastau-Timestamp": ts, "X-Rastau-Signature": signature, "Content-Type": "application/json"}

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as response:
            return response.status, await response.text()

    async def reply(self, url: str, secret: str, phone: str, text: str, *, message_id: str | None = None,
                    timestamp: int | None = None) -> tuple[int, str]:
        """A patient's SMS to our inbound webhook, signed as the gateway signs it."""
        body = json.dumps({"id": message_id or f"in-{next(self._ids)}", "from": phone, "text": text}).encode()
        return await self.post(url, body, self.signed(secret, body, timestamp))

    async def report(self, url: str, secret: str, sms_id: str, status: str = "delivered",
                     timestamp: int | None = None) -> tuple[int, str]:
        body = json.dumps({"id": sms_id, "status": status}).encode()
        return await self.post(url, body, self.signed(secret, body, timestamp))


async def _serve(port: int) -> None:
    gateway = SmsGatewayStandIn(port=port)
    await gateway.start()
    print(f"SMS gateway stand-in on {gateway.base_url} (login {gateway.login}, password {gateway.password})")
    seen = 0
    while True:
        await asyncio.sleep(0.5)
        for sms in gateway.sent[seen:]:
            print(f"SMS {sms.id} to {sms.to}: {sms.text}")
        seen = len(gateway.sent)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8083)
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
