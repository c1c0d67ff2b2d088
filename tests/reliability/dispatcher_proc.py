"""The outbox dispatcher in a process of its own, for the crash harness (tests/reliability/test_crash_delivery.py).

Configuration comes from the environment variable ``RASTAU_CRASH_CONFIG`` (JSON: settings values, the Bot API
base url and token, the client timeout, the send rates and the batch size). The settings may turn on WhatsApp and
SMS (their stand-ins' URLs and credentials): the dispatcher then gets the channels as bot/channels/wiring.py gives
them to the bot's own dispatcher. Two ways to start it:

    python tests/reliability/dispatcher_proc.py run --worker-id w-main --lease 60 --offset 0 [--until-drained]
                                                    [--offset-from-stdin]
    python tests/reliability/dispatcher_proc.py serve

``run`` is one dispatcher: the real ``OutboxDispatcher.run_forever`` with the real ``OutboxRenderer`` (codes are
issued at send time), until it is killed — or, with ``--until-drained``, until no outbox row is left pending or
claimed, then it exits 0. With ``--offset-from-stdin`` it imports everything, then waits for a line on stdin
that gives the clock offset before it starts: the harness execs its final run while the kill phase goes on.

``serve`` is a fork server. Importing aiogram takes seconds on a busy machine, and the harness restarts the
dispatcher more than fifty times, so this process imports everything once, builds what every dispatcher would
otherwise build on its first use (:func:`warm`: babel's locale data, the database dialect, aiogram's typed answer;
the settings and the bot's unconnected HTTP session, :func:`prepare`), and then forks a fresh dispatcher process
per ``spawn`` line on stdin: one is ready after ~10 ms of its CPU (SQLite; ~150 ms before the warming). Each
dispatcher is a real process of its own (own pid, own database connections, own sockets) that the test kills with
SIGKILL; nothing of it survives in the server, which only reaps it. Protocol, one line each way:

    -> spawn WORKER_ID LEASE_SECONDS CLOCK_OFFSET_SECONDS      <- spawned PID     (and later, from the child: ready PID)
    -> reap PID                                                 <- reaped PID STATUS
    -> quit

The clock is the system clock shifted by ``CLOCK_OFFSET_SECONDS`` (:class:`ShiftedClock`): it moves at real speed,
so claim leases expire in real seconds as in production, while the test moves the schedule forward between
restarts by handing the next process a larger offset.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from aiogram import Bot  # noqa: E402
from aiogram.methods import SendMessage  # noqa: E402
from aiogram.methods.base import Response  # noqa: E402

from bot.channels.wiring import ChannelRuntime  # noqa: E402
from bot.delivery.dispatcher import OutboxDispatcher  # noqa: E402
from bot.i18n import LANGUAGES, day_and_time, day_name, make_i18n, short_when, until, when  # noqa: E402
from bot.rendering import OutboxRenderer  # noqa: E402
from bot.session import BotSession, create_session  # noqa: E402
from core.channels import ChannelName  # noqa: E402
from core.clock import ShiftedClock  # noqa: E402
from core.config import Settings  # noqa: E402
from core.db import tables as t  # noqa: E402
from core.db.engine import create_engine  # noqa: E402
from core.db.uow import UnitOfWorkFactory  # noqa: E402
from core.logs import configure_logging  # noqa: E402
from core.services import Context  # noqa: E402

CONFIG_ENV = "RASTAU_CRASH_CONFIG"


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())  # one write(2): lines of parent and children never interleave


def prepare(config: dict) -> tuple[Settings, BotSession]:
    """The settings, and the bot's HTTP session as the bot makes it: it opens no connection before its first request
    (aiohttp's own session and its sockets are made then), so a copy made before a fork is the child's alone."""
    session = create_session(config["base_url"], timeout=config["timeout"])
    return Settings(_env_file=None, **config["settings"]), session


_WARM: list[object] = []  # what warm() built, held: pydantic keeps parametrized models only while referenced


def warm(settings: Settings) -> None:
    """Build once in the fork server what every dispatcher would otherwise build on first use: the WhatsApp channel's
    module (with the redis client it imports), the database's SQLAlchemy dialect, babel's locale data for each
    language, aiogram's typed answer to a send. Each cost 10-100 ms of CPU per process, sixty times over."""
    import bot.channels.whatsapp  # noqa: F401 - wiring.py imports it when WhatsApp is on

    sa.engine.make_url(settings.database_url).get_dialect().import_dbapi()  # asyncpg: 30 ms

    moment = dt.datetime(2026, 11, 25, 4, 0, tzinfo=dt.UTC)
    for locale in LANGUAGES:
        when(moment, locale), short_when(moment, locale), day_and_time(moment, locale), until(moment, locale)
        day_name(moment.date(), locale)
    _WARM.append(Response[SendMessage.__returning__])


async def dispatch(config: dict, i18n, worker_id: str, lease: float, offset: float, until_drained: bool,
                   prepared: tuple[Settings, BotSession] | None = None) -> None:
    settings, session = prepared or prepare(config)
    engine = create_engine(settings.database_url)
    ctx = Context.build(settings, UnitOfWorkFactory(engine), ShiftedClock(offset))
    bot = Bot(config["token"], session=session)
    channels = ChannelRuntime(ctx, i18n)  # as the bot's process wires them: SMS and WhatsApp when configured
    whatsapp = channels.senders.get(ChannelName.WHATSAPP)
    if whatsapp is not None:  # a send must not outlast the short lease of the alt workers
        whatsapp.api.timeout = config["timeout"]  # type: ignore[attr-defined]
    renderer = OutboxRenderer(ctx, i18n, channels=channels.enabled) if channels.senders else OutboxRenderer(ctx, i18n)
    dispatcher = OutboxDispatcher(ctx, bot, renderer, worker_id=worker_id,
                                  rate_global=config["rate_global"], rate_per_chat=config["rate_per_chat"],
                                  batch=config["batch"], lease=dt.timedelta(seconds=lease), channels=channels.senders)
    _say(f"ready {os.getpid()}")
    watchdog = asyncio.create_task(_exit_when_orphaned(os.getppid()))
    try:
        if not until_drained:
            await dispatcher.run_forever(asyncio.Event(), idle=config.get("idle", 0.1))
            return
        deadline = time.monotonic() + config.get("drain_timeout", 120)
        while time.monotonic() < deadline:
            await dispatcher.drain()
            async with ctx.uow(read_only=True) as uow:
                left = (await uow.conn.execute(sa.select(sa.func.count()).select_from(t.outbox).where(
                    t.outbox.c.status.in_(("pending", "sending"))))).scalar_one()
            if not left:
                _say(f"drained {os.getpid()}")
                return
            await asyncio.sleep(0.2)  # rows handed back for a later turn
        raise SystemExit("outbox not drained before the deadline")
    finally:
        watchdog.cancel()
        await channels.close()
        await session.close()
        await engine.dispose()


async def _exit_when_orphaned(parent: int) -> None:
    """A dispatcher whose fork server (or test) is gone must not keep running on a shared machine."""
    while True:
        await asyncio.sleep(0.5)
        if os.getppid() != parent:
            os._exit(3)


def _run_child(config: dict, i18n, worker_id: str, lease: float, offset: float, until_drained: bool,
               prepared: tuple[Settings, BotSession] | None = None) -> int:
    try:
        asyncio.run(dispatch(config, i18n, worker_id, lease, offset, until_drained, prepared))
        return 0
    except BaseException:  # noqa: BLE001 - report whatever ended the child, then exit with a status
        traceback.print_exc()
        sys.stderr.flush()
        return 1


def serve(config: dict) -> None:
    i18n = make_i18n()  # once, before forking: the children share the loaded catalogs
    prepared = prepare(config)
    warm(prepared[0])
    children: set[int] = set()
    _say("zygote ready")
    try:
        _serve(config, i18n, prepared, children)
    finally:  # the test is done or gone: no dispatcher outlives it
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def _serve(config: dict, i18n, prepared: tuple[Settings, BotSession], children: set[int]) -> None:
    for raw in sys.stdin:
        words = raw.split()
        if not words:
            continue
        if words[0] == "spawn":
            worker_id, lease, offset = words[1], float(words[2]), float(words[3])
            pid = os.fork()
            if pid == 0:  # the dispatcher process
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os._exit(_run_child(config, i18n, worker_id, lease, offset, until_drained=False, prepared=prepared))
            children.add(pid)
            _say(f"spawned {pid}")
        elif words[0] == "reap":
            pid = int(words[1])
            _, status = os.waitpid(pid, 0)
            children.discard(pid)
            _say(f"reaped {pid} {status}")
        elif words[0] == "quit":
            break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve")
    run = sub.add_parser("run")
    run.add_argument("--worker-id", required=True)
    run.add_argument("--lease", type=float, default=60.0)
    run.add_argument("--offset", type=float, default=0.0)
    run.add_argument("--until-drained", action="store_true")
    run.add_argument("--offset-from-stdin", action="store_true",
                     help="start once a line on stdin gives the clock offset (ignores --offset)")
    args = parser.parse_args(argv)
    config = json.loads(os.environ[CONFIG_ENV])
    configure_logging(config.get("log_level", "WARNING"), "console")
    if args.command == "serve":
        serve(config)
        return 0
    i18n = make_i18n()
    offset = float(sys.stdin.readline()) if args.offset_from_stdin else args.offset
    return _run_child(config, i18n, args.worker_id, args.lease, offset, args.until_drained)


if __name__ == "__main__":
    sys.exit(main())
