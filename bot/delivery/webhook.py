"""The payer's webhook sender: the outbox rows for the payer (core/services/payer.py) POSTed to
``RASTAU_PAYER_WEBHOOK_URL``, at least once, with the chats' rules for claims and retries.

A row is claimed (committed) before it is sent and marked after, as the chat dispatcher does, so a sender that dies
mid-POST sends the event again after its claim lapses: the receiver dedupes on the event id. An answer other than
2xx, a timeout or a refused connection is retried with the chats' backoff (2, 4, 8 … s, up to 10 min); after
``MAX_FAILURES`` the row is given up as ``failed``, a dead letter ``rastau payer-events`` lists and requeues.
It runs in the bot process beside the chat dispatcher, which never claims these rows.
"""
from __future__ import annotations

import datetime as dt
import json

import aiohttp

from bot.delivery.dispatcher import MAX_CLAIMS, MAX_FAILURES, backoff, default_worker_id, drain
from core.db.repositories import AnyRow
from core.logs import get_logger
from core.model import OutboxStatus
from core.services import Context
from core.services.payer import EVENT_ID_HEADER, SIGNATURE_HEADER, body_bytes, signature

log = get_logger("rastau.payer_webhook")


class PayerWebhookSender:
    def __init__(self, ctx: Context, *, worker_id: str | None = None, timeout: float = 10.0,
                 lease: dt.timedelta = dt.timedelta(seconds=60), batch: int = 50):
        url, secret = ctx.settings.payer_webhook_url, ctx.settings.payer_webhook_secret
        if not url or secret is None:
            raise ValueError("the payer's webhook needs RASTAU_PAYER_WEBHOOK_URL and RASTAU_PAYER_WEBHOOK_SECRET")
        if lease.total_seconds() <= timeout:
            raise ValueError(f"a {lease} claim lease does not outlast one POST ({timeout}s timeout)")
        self._ctx, self._url, self._secret = ctx, url, secret.get_secret_value()
        self.worker_id = f"{worker_id or default_worker_id()}:payer"
        # POSTs go one after another: a batch of slow answers must still end inside its claim
        self._batch = max(1, min(batch, int(lease.total_seconds() // timeout) - 1))
        self._timeout, self._lease = aiohttp.ClientTimeout(total=timeout), lease
        self._session: aiohttp.ClientSession | None = None
        self._released = False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def run_once(self) -> int:
        """Claim the events that are due and POST them one after another, oldest first; the number handled. The first
        round takes back at once what a previous run under the same worker id held when it died."""
        now = self._ctx.clock.now()
        async with self._ctx.uow() as uow:
            if not self._released:
                await uow.outbox.release_claims(self.worker_id)
                self._released = True
            rows = await uow.outbox.claim_due(now, self.worker_id, self._lease, self._batch, payer=True)
            await uow.commit()
        if self._session is None and rows:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        for row in rows:
            await self._deliver(row)
        return len(rows)

    async def drain(self, max_rounds: int = 1000) -> int:
        """POST until nothing is due (tests and the demo)."""
        return await drain(self.run_once, max_rounds)

    async def _deliver(self, row: AnyRow) -> None:
        event = json.loads(row.payload)
        if row.attempts > MAX_CLAIMS:
            await self._finish(row.id, OutboxStatus.FAILED, f"claimed {row.attempts} times without an outcome")
            log.error("payer event abandoned: senders keep dying on it", outbox_id=row.id)
            return
        body = body_bytes(event)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(self._secret, body),
                   EVENT_ID_HEADER: str(event["id"])}
        assert self._session is not None, "opened in run_once"
        try:
            async with self._session.post(self._url, data=body, headers=headers) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self._retry(row, f"{type(exc).__name__}: {exc}".replace(self._url, "<payer url>")[:300])
            return
        if 200 <= status < 300:
            await self._finish(row.id, OutboxStatus.SENT, None)
            log.info("payer event delivered", outbox_id=row.id, event_type=event.get("type"))
        else:
            await self._retry(row, f"the payer answered HTTP {status}")

    async def _retry(self, row: AnyRow, error: str) -> None:
        failures = row.failures + 1
        if failures >= MAX_FAILURES:
            await self._finish(row.id, OutboxStatus.FAILED, f"gave up after {failures} failed POSTs: {error}")
            log.error("payer event given up: a dead letter for the operator", outbox_id=row.id, failures=failures)
            return
        async with self._ctx.uow() as uow:
            await uow.outbox.retry_later(row.id, self._ctx.clock.now() + backoff(failures), error,
                                         worker_id=self.worker_id)
            await uow.commit()
        log.warning("payer event will be retried", outbox_id=row.id, failures=failures, error=error)

    async def _finish(self, message_id: int, status: OutboxStatus, error: str | None) -> None:
        async with self._ctx.uow() as uow:
            await uow.outbox.finish(message_id, status, self._ctx.clock.now(), error=error, worker_id=self.worker_id)
            await uow.commit()
