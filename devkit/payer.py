"""A stand-in for the payer's webhook receiver, on 127.0.0.1, for tests and the demo: it checks each POST's
``X-Rastau-Signature`` as a real receiver must, keeps each event once by its id (a repeat is answered 200 and counted,
not kept again), and injects faults on request: the next N POSTs answered 500 (or any status), or answered slowly.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from core.services.payer import EVENT_ID_HEADER, SIGNATURE_HEADER, signature_valid


@dataclass
class PayerStandIn:
    secret: str
    port: int = 0
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # kept once per event id, in arrival order
    deliveries: dict[str, int] = field(default_factory=dict)  # POSTs per event id, repeats and refusals included
    bodies: list[bytes] = field(default_factory=list)  # the raw body of every POST, in order
    forged: int = 0  # POSTs refused for a signature that does not hold
    base_url: str = ""
    _faults: list[tuple[int, float]] = field(default_factory=list)  # (status, delay) of the next POSTs
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"{self.base_url}/rastau-events"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/rastau-events", self._receive)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def fail_next(self, n: int, status: int = 500, delay: float = 0.0) -> None:
        """Answer the next ``n`` POSTs with ``status`` after ``delay`` seconds, keeping nothing (200 with a delay:
        a slow receiver that does keep the event)."""
        self._faults.extend([(status, delay)] * n)

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        event_id = request.headers.get(EVENT_ID_HEADER, "")
        self.deliveries[event_id] = self.deliveries.get(event_id, 0) + 1
        self.bodies.append(body)
        if self._faults:
            status, delay = self._faults.pop(0)
            await asyncio.sleep(delay)
            if status != 200:
                return web.Response(status=status, text="injected fault")
        if not signature_valid(self.secret, body, request.headers.get(SIGNATURE_HEADER)):
            self.forged += 1
            return web.Response(status=401, text="bad signature")
        event = json.loads(body)
        if event.get("id") != event_id:
            return web.Response(status=400, text="the event id header does not name the body's event")
        self.events.setdefault(event_id, event)
        return web.Response(status=200, text="ok")
