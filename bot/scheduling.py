"""Time-driven work, on APScheduler with an in-memory job store: the jobs are defined here in code and
rebuilt at every start; their state lives in the database (visits, outbox), so nothing is pickled and a
restart loses nothing.

- every minute: close the verification windows that ended (visits become ``unverified``);
- every second: the outbox dispatcher delivers what is due (codes, prompts, notices, digests);
- daily at ``digest_time`` Asia/Almaty: queue the previous day's digest for every clinic admin and the summary for
  every linked auditor (with the day's red flags for the payer's webhook), plus a catch-up at start when the bot was
  down at that moment (the dedupe keys make repeats harmless);
- every ``checkpoint_minutes``: sign the audit chains' heads and push them to the auditors and the webhook;
- every second, when a payer webhook is configured: POST the payer's events that are due;
- hourly: forget processed update ids older than Telegram's redelivery horizon;
- daily at 03:30 Asia/Almaty: the retention purge (core/services/retention.py).
"""
from __future__ import annotations

import datetime as dt

from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bot.delivery.dispatcher import OutboxDispatcher
from bot.delivery.webhook import PayerWebhookSender
from core.clock import ALMATY, to_local
from core.config import Settings
from core.logs import get_logger
from core.services import Context
from core.services.auditor_summary import queue_auditor_summaries
from core.services.checkpoints import push_checkpoint
from core.services.digest import queue_daily_digests
from core.services.payer import queue_flag_events
from core.services.retention import purge
from core.services.updates import prune_processed_updates
from core.services.visits import close_expired_windows
from core.signing import Signer

log = get_logger("rastau.scheduler")


def digest_clock(settings: Settings) -> dt.time:
    hour, minute = settings.digest_time.split(":")
    return dt.time(int(hour), int(minute))


async def close_windows_job(ctx: Context) -> int:
    closed = await close_expired_windows(ctx)
    if closed:
        log.info("verification windows closed", visits=closed)
    return closed


async def daily_digest_job(ctx: Context) -> int:
    """Queue yesterday's (Asia/Almaty) digest for every admin."""
    yesterday = to_local(ctx.clock.now(), ALMATY).date() - dt.timedelta(days=1)
    queued = await queue_daily_digests(ctx, yesterday)
    log.info("daily digests queued", day=yesterday.isoformat(), messages=queued)
    return queued


async def auditor_summary_job(ctx: Context) -> int:
    """Queue yesterday's (Asia/Almaty) summary for every linked auditor, and its flags for the payer's webhook."""
    yesterday = to_local(ctx.clock.now(), ALMATY).date() - dt.timedelta(days=1)
    queued = await queue_auditor_summaries(ctx, yesterday)
    flags = await queue_flag_events(ctx, yesterday)
    log.info("auditor summaries queued", day=yesterday.isoformat(), messages=queued, payer_flags=flags)
    return queued


async def digest_catch_up(ctx: Context) -> int:
    """At start: if today's digest time has already passed, make sure yesterday's digest was queued."""
    if to_local(ctx.clock.now(), ALMATY).time() < digest_clock(ctx.settings):
        return 0
    return await daily_digest_job(ctx)


async def auditor_summary_catch_up(ctx: Context) -> int:
    """At start: the auditors' summary of yesterday, when its time has passed (as :func:`digest_catch_up`)."""
    if to_local(ctx.clock.now(), ALMATY).time() < digest_clock(ctx.settings):
        return 0
    return await auditor_summary_job(ctx)


async def checkpoint_job(ctx: Context, signer: Signer) -> int:
    return await push_checkpoint(ctx, signer)


async def payer_webhook_job(sender: PayerWebhookSender) -> int:
    return await sender.run_once()


async def deliver_job(dispatcher: OutboxDispatcher) -> int:
    return await dispatcher.run_once()


async def prune_job(ctx: Context) -> int:
    return await prune_processed_updates(ctx)


async def retention_job(ctx: Context) -> int:
    """The retention purge (core/services/retention.py): counts only in the log."""
    report = await purge(ctx)
    if report.total:
        log.info("retention purge", **report.counts)
    return report.total


def build_scheduler(ctx: Context, dispatcher: OutboxDispatcher, *, deliver_every: float = 1.0,
                    signer: Signer | None = None, payer: PayerWebhookSender | None = None) -> AsyncIOScheduler:
    """All jobs, none started. ``max_instances=1`` + ``coalesce``: a slow round is never run twice at once.
    Checkpoints are made with ``signer``, the payer's events POSTed by ``payer``; either left out, no such job."""
    scheduler = AsyncIOScheduler(jobstores={"default": MemoryJobStore()}, executors={"default": AsyncIOExecutor()},
                                 job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
                                 timezone=ALMATY)
    at = digest_clock(ctx.settings)
    scheduler.add_job(close_windows_job, IntervalTrigger(minutes=1), args=[ctx], id="close_windows")
    scheduler.add_job(deliver_job, IntervalTrigger(seconds=deliver_every), args=[dispatcher], id="deliver")
    scheduler.add_job(daily_digest_job, CronTrigger(hour=at.hour, minute=at.minute, timezone=ALMATY), args=[ctx],
                      id="daily_digest", misfire_grace_time=3600)
    scheduler.add_job(auditor_summary_job, CronTrigger(hour=at.hour, minute=at.minute, timezone=ALMATY), args=[ctx],
                      id="auditor_summary", misfire_grace_time=3600)
    if signer is not None:
        scheduler.add_job(checkpoint_job, IntervalTrigger(minutes=ctx.settings.checkpoint_minutes),
                          args=[ctx, signer], id="audit_checkpoint")
    if payer is not None:
        scheduler.add_job(payer_webhook_job, IntervalTrigger(seconds=deliver_every), args=[payer], id="payer_webhook")
    scheduler.add_job(prune_job, IntervalTrigger(hours=1), args=[ctx], id="prune_updates")
    # issue 16: daily at 03:30 Asia/Almaty, when the clinics are closed
    scheduler.add_job(retention_job, CronTrigger(hour=3, minute=30, timezone=ALMATY), args=[ctx], id="retention",
                      misfire_grace_time=6 * 3600)
    return scheduler


async def start_scheduler(ctx: Context, dispatcher: OutboxDispatcher, *, signer: Signer | None = None,
                          payer: PayerWebhookSender | None = None) -> AsyncIOScheduler:
    """Catch up on what a downtime missed, then run the jobs."""
    await close_windows_job(ctx)
    await digest_catch_up(ctx)
    await auditor_summary_catch_up(ctx)
    if signer is not None:
        await checkpoint_job(ctx, signer)
    scheduler = build_scheduler(ctx, dispatcher, signer=signer, payer=payer)
    scheduler.start()
    return scheduler
