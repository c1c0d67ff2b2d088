"""The outbox dispatcher: every outgoing chat message goes through here.

Delivery is at-least-once with each outbox row as the unit: a row is claimed (committed) before it is
rendered and sent, and marked done after. A dispatcher that dies between the two leaves a claim that
expires (or that it releases itself when it restarts with the same worker id), so the message is sent
after the restart; several dispatchers on PostgreSQL never claim the same row (FOR UPDATE SKIP LOCKED).
A claim is a lease, so no send starts unless its answer (or timeout) and the row's update fit inside it:
a row whose turn comes later (pacing, a 429 pause) is handed back rather than sent after another
dispatcher may have taken it over.
Multi-part messages record each part as it goes out, so neither a retry nor a restart repeats the text
before a file.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
from collections.abc import Awaitable, Callable, Mapping

from aiogram import Bot
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNotFound,
)

from bot.channels.base import (
    AttendanceQuestion,
    Channel,
    ChannelGone,
    ChannelRefused,
    ChannelRetry,
    CodeMessage,
    PatientMessage,
    Sent,
)
from bot.channels.routing import NO_CHANNEL, ROUTED_KINDS
from bot.channels.telegram import TelegramChannel
from bot.delivery.limits import Pacer, SendPacer, TooLate
from bot.delivery.types import OutboxItem, Outgoing, Renderer
from core.channels import ChannelName
from core.db.repositories import AnyRow
from core.logs import get_logger
from core.model import OutboxStatus, Recipient
from core.services import Context
from core.services.channels import record_gone

log = get_logger("rastau.dispatcher")

MAX_FAILURES = 12  # failed sends (5xx, timeouts, render errors) before a message is given up
MAX_CLAIMS = 60  # claims without an outcome (dispatchers dying on it) before it is given up as poison
LEASE_SLACK = 2.0  # seconds a claim must outlast a send's timeout, to mark the row done while still ours


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def backoff(attempts: int) -> dt.timedelta:
    """2, 4, 8 … seconds, capped at 10 minutes."""
    return dt.timedelta(seconds=min(2 ** max(attempts, 1), 600))


async def drain(run_once: Callable[[], Awaitable[int]], max_rounds: int) -> int:
    """Run a sender's rounds until one handles nothing; the total handled. Both outbox senders (chat and the
    payer's webhook) drain this way."""
    total = 0
    for _ in range(max_rounds):
        handled = await run_once()
        total += handled
        if not handled:
            break
    return total


class OutboxDispatcher:
    def __init__(self, ctx: Context, bot: Bot, renderer: Renderer, *, worker_id: str | None = None,
                 rate_global: float | None = None, rate_per_chat: float | None = None, batch: int = 100,
                 lease: dt.timedelta = dt.timedelta(seconds=60), concurrency: int = 32,
                 pacer: Pacer | None = None, channels: Mapping[ChannelName, Channel] | None = None):
        """``pacer``: a `SharedSendPacer` when several dispatchers share Telegram's limits; by default this
        process keeps them alone (``rate_global`` and ``rate_per_chat`` per second). Its clock tells every send's
        deadline, so the other channels' pacers must run on the same one (real time in production). ``channels``: the
        patients' other channels (issue 14: SMS, WhatsApp); with any, a patient who blocked the bot is reached on the
        next."""
        self._ctx, self._bot, self._renderer = ctx, bot, renderer
        self._channels: dict[ChannelName, Channel] = dict(channels or {})
        self._patient_locks: dict[int, asyncio.Lock] = {}
        self.worker_id = worker_id or default_worker_id()
        self._pacer = pacer or SendPacer(rate_global or ctx.settings.send_rate_global,
                                         rate_per_chat or ctx.settings.send_rate_per_chat)
        self._telegram = TelegramChannel(bot, self._pacer)  # every Telegram part goes out through it
        self._batch, self._lease = batch, lease
        self._send_window = lease.total_seconds() - bot.session.timeout - LEASE_SLACK
        if self._send_window <= 0:
            raise ValueError(f"a {lease} claim lease does not outlast one send ({bot.session.timeout}s timeout)")
        self._slots = asyncio.Semaphore(concurrency)
        self._chat_locks: dict[int, asyncio.Lock] = {}
        self._released = False

    async def release_own_claims(self) -> int:
        async with self._ctx.uow() as uow:
            released = await uow.outbox.release_claims(self.worker_id)
            await uow.commit()
        if released:
            log.warning("released claims left by a previous run", worker=self.worker_id, rows=released)
        return released

    async def run_once(self) -> int:
        """Claim what is due now and deliver it. Returns the number of rows handled."""
        if not self._released:
            await self.release_own_claims()
            self._released = True
        now = self._ctx.clock.now()
        send_by = self._pacer.now() + self._send_window
        async with self._ctx.uow() as uow:
            rows = await uow.outbox.claim_due(now, self.worker_id, self._lease, self._batch)
            await uow.commit()
        if rows:
            await asyncio.gather(*(self._deliver(row, send_by) for row in rows))
        return len(rows)

    async def drain(self, max_rounds: int = 1000) -> int:
        """Deliver until nothing is due (tests and the demo)."""
        return await drain(self.run_once, max_rounds)

    async def run_forever(self, stop: asyncio.Event, idle: float = 1.0) -> None:
        while not stop.is_set():
            try:
                handled = await self.run_once()
            except Exception:  # the loop must survive a database hiccup (logged with its traceback)
                log.exception("dispatcher round failed; retrying")
                handled = 0
            if not handled:
                try:
                    await asyncio.wait_for(stop.wait(), idle)
                except TimeoutError:
                    pass

    async def _deliver(self, row: AnyRow, send_by: float) -> None:
        item = OutboxItem(id=row.id, kind=row.kind, recipient_kind=Recipient(row.recipient_kind),
                          recipient_id=row.recipient_id, visit_id=row.visit_id,
                          payload=json.loads(row.payload or "{}"), attempts=row.attempts, failures=row.failures)
        if item.attempts > MAX_CLAIMS:
            await self._finish(item.id, OutboxStatus.FAILED, f"claimed {item.attempts} times without an outcome")
            log.error("message abandoned: dispatchers keep dying on it", outbox_id=item.id, kind=item.kind,
                      claims=item.attempts)
            return
        async with self._slots:
            try:
                parts = await self._renderer.render(item)
            except Exception as exc:  # a rendering bug must not lose the message (logged, rescheduled)
                log.exception("rendering failed", outbox_id=item.id, kind=item.kind)
                await self._reschedule(item, f"render: {type(exc).__name__}")
                return
            if isinstance(parts, PatientMessage):  # issue 14: a patient's code or question on another channel
                async with self._patient_locks.setdefault(parts.patient_id, asyncio.Lock()):
                    await self._send_on_channel(item, parts, send_by)
                return
            if not parts:
                await self._finish(item.id, OutboxStatus.SKIPPED,
                                   "nothing to send (no linked chat or no longer relevant)")
                return
            lock = self._chat_locks.setdefault(parts[0].chat_id, asyncio.Lock())
            async with lock:
                await self._send_parts(item, parts, row.parts_sent, send_by)

    async def _send_parts(self, item: OutboxItem, parts: list[Outgoing], already_sent: int,
                          send_by: float) -> None:
        last_message_id = last_chat_id = None
        for index, part in enumerate(parts):
            if index < already_sent:
                continue
            try:
                sent_id = await self._telegram.send_outgoing(part, send_by)
                if part.edit_message_id is None:
                    last_message_id, last_chat_id = sent_id, part.chat_id
                if index + 1 < len(parts):  # a crash before the next part must not repeat this one
                    async with self._ctx.uow() as uow:
                        await uow.outbox.set_parts_sent(item.id, index + 1, worker_id=self.worker_id)
                        await uow.commit()
            except TooLate as late:
                await self._hand_back(item, late.at)
                return
            except TelegramForbiddenError as exc:
                if self._channels and index == 0 and item.kind in ROUTED_KINDS \
                        and item.recipient_kind is Recipient.PATIENT:  # nothing reached the patient: next channel
                    await self._fall_back(item, item.recipient_id, ChannelName.TELEGRAM, str(part.chat_id),
                                          "blocked the bot")
                    return
                await self._blocked(item, part.chat_id, exc)
                return
            except (TelegramBadRequest, TelegramNotFound) as exc:
                await self._finish(item.id, OutboxStatus.FAILED, f"bad request: {exc.message}"[:300])
                log.error("telegram refused message", outbox_id=item.id, kind=item.kind, error=exc.message)
                return
            except (TimeoutError, ChannelRetry, TelegramAPIError) as exc:  # 5xx, network, timeouts, 429s in a row
                await self._reschedule(item, f"{type(exc).__name__}: {exc}"[:300])
                return
        await self._finish(item.id, OutboxStatus.SENT, None, last_message_id, last_chat_id)
        log.info("message delivered", outbox_id=item.id, kind=item.kind, recipient_kind=item.recipient_kind)

    async def _reschedule(self, item: OutboxItem, error: str) -> None:
        failures = item.failures + 1
        if failures >= MAX_FAILURES:
            await self._finish(item.id, OutboxStatus.FAILED, f"gave up after {failures} failed sends: {error}")
            log.error("message abandoned", outbox_id=item.id, kind=item.kind, failures=failures)
            return
        due = self._ctx.clock.now() + backoff(failures)
        async with self._ctx.uow() as uow:
            await uow.outbox.retry_later(item.id, due, error, worker_id=self.worker_id)
            await uow.commit()
        log.warning("delivery will be retried", outbox_id=item.id, kind=item.kind, failures=failures, error=error)

    async def _hand_back(self, item: OutboxItem, turn_at: float) -> None:
        """The claim would lapse before this row's turn: queue it again for when its turn comes."""
        due = self._ctx.clock.now() + dt.timedelta(seconds=max(0.0, turn_at - self._pacer.now()))
        async with self._ctx.uow() as uow:
            await uow.outbox.retry_later(item.id, due, "handed back: its turn to send came after the claim lapsed",
                                         failed=False, worker_id=self.worker_id)
            await uow.commit()

    async def _blocked(self, item: OutboxItem, chat_id: int, exc: Exception) -> None:
        now = self._ctx.clock.now()
        async with self._ctx.uow() as uow:
            await uow.outbox.finish(item.id, OutboxStatus.BLOCKED, now, error=str(exc)[:300], worker_id=self.worker_id)
            if item.recipient_kind is Recipient.PATIENT:
                await uow.patients.mark_chat_blocked(chat_id)
            await uow.commit()
        log.warning("recipient blocked the bot; not retrying", outbox_id=item.id, kind=item.kind,
                    recipient_kind=item.recipient_kind)

    async def _finish(self, message_id: int, status: OutboxStatus, error: str | None,
                      chat_message_id: int | None = None, chat_id: int | None = None) -> None:
        async with self._ctx.uow() as uow:
            ours = await uow.outbox.finish(message_id, status, self._ctx.clock.now(), error=error,
                                           chat_message_id=chat_message_id, worker_id=self.worker_id,
                                           chat_id=chat_id)
            await uow.commit()
        if not ours:
            log.warning("claim lapsed before the outcome was recorded; another dispatcher owns the row now",
                        outbox_id=message_id, outcome=status)

    # --- issue 14: a patient's code or question on a channel other than Telegram ----------------------------------

    async def _send_on_channel(self, item: OutboxItem, message: PatientMessage, send_by: float) -> None:
        """One channel per claim: the patient's first working one. Gone for good: recorded, and the row goes back at
        once to be rendered for the next channel (bot/channels/routing.py)."""
        if message.content is None or not message.routes:
            await self._finish_on(item, OutboxStatus.SKIPPED, None, f"{NO_CHANNEL}: the patient has no working channel")
            log.warning("patient has no working channel", outbox_id=item.id, kind=item.kind,
                        patient_id=message.patient_id)
            return
        to = message.routes[0]
        channel = self._channels.get(to.channel)
        if channel is None:  # the renderer knows a channel this dispatcher was not given: a wiring mistake
            await self._reschedule(item, f"{to.channel.value}: no sender for this channel in this dispatcher")
            return
        try:
            content = message.content
            if isinstance(content, CodeMessage):
                sent = await channel.send_code(to, content, not_after=send_by)
            elif isinstance(content, AttendanceQuestion):
                sent = await channel.ask_attendance(to, content, not_after=send_by)
            else:
                sent = await channel.send_notice(to, content, not_after=send_by)
        except TooLate as late:
            await self._hand_back(item, late.at)
        except ChannelGone as gone:
            await self._fall_back(item, message.patient_id, to.channel, to.value, gone.reason)
        except ChannelRefused as refused:
            await self._finish_on(item, OutboxStatus.FAILED, to.channel, f"{to.channel.value}: {refused.reason}")
            log.error("channel refused message", outbox_id=item.id, kind=item.kind, channel=to.channel.value,
                      error=refused.reason)
        except ChannelRetry as retry:
            await self._reschedule(item, f"{to.channel.value}: {retry.reason}")
        else:
            await self._finish_on(item, OutboxStatus.SENT, to.channel, None, sent)
            log.info("message delivered", outbox_id=item.id, kind=item.kind, recipient_kind=item.recipient_kind,
                     channel=to.channel.value)

    async def _fall_back(self, item: OutboxItem, patient_id: int, channel: ChannelName, address: str,
                         reason: str) -> None:
        """The channel can never reach the patient: say why on their channel row and on the outbox row, and queue
        the row again now, for the next channel. Each fallback spends one unit of the retry budget, so a channel
        that keeps claiming to be gone cannot loop."""
        await record_gone(self._ctx, patient_id, channel, address, reason)
        async with self._ctx.uow() as uow:
            row = await uow.outbox.get(item.id)
            earlier = row.channel_note if row is not None and row.channel_note else None
            note = f"{earlier}; {channel.value}: {reason}" if earlier else f"{channel.value}: {reason}"
            await uow.channels.set_outbox_channel(item.id, channel=channel.value, channel_message_id=None, note=note,
                                                  worker_id=self.worker_id)
            await uow.outbox.retry_later(item.id, self._ctx.clock.now(), f"fell back: {channel.value} {reason}",
                                         worker_id=self.worker_id)
            await uow.commit()
        log.warning("channel gone; the message goes on the next channel", outbox_id=item.id, kind=item.kind,
                    channel=channel.value)

    async def _finish_on(self, item: OutboxItem, status: OutboxStatus, channel: ChannelName | None,
                         error: str | None, sent: Sent | None = None) -> None:
        now = self._ctx.clock.now()
        async with self._ctx.uow() as uow:
            row = await uow.outbox.get(item.id)
            note = row.channel_note if row is not None else None
            await uow.channels.set_outbox_channel(
                item.id, channel=channel.value if channel else None,
                channel_message_id=sent.message_id if sent else None, note=note, worker_id=self.worker_id)
            ours = await uow.outbox.finish(item.id, status, now, error=error[:300] if error else None,
                                           worker_id=self.worker_id)
            await uow.commit()
        if not ours:
            log.warning("claim lapsed before the outcome was recorded; another dispatcher owns the row now",
                        outbox_id=item.id, outcome=status)
