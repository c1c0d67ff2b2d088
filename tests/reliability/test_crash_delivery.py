"""Crash during delivery (issue 6, Faults): 500 visits run through their day while the dispatcher process is
killed with SIGKILL at random moments, more than fifty times, and restarted each time.

What runs where:
- this test process registers the visits through the core services (each queues its real code and
  "were you there?" prompt), hosts the Bot API, WhatsApp Cloud API and SMS gateway stand-ins, and kills and
  restarts the dispatcher;
- the dispatcher runs in processes of its own (tests/reliability/dispatcher_proc.py): the real
  OutboxDispatcher.run_forever with the real OutboxRenderer and real catalogs, and the WhatsApp and SMS channels
  as bot/channels/wiring.py gives them to the bot, so every code is issued at send time. A fork server imports
  aiogram once, builds what each dispatcher would otherwise build on first use, and forks each dispatcher, so a
  restart is ready after ~10 ms of its CPU, not seconds; the final clean run is a freshly exec'd process, exec'd when
  the kill phase begins so that its imports overlap it (it waits on stdin for its clock).

Channels (issue 14): of the patients with a single visit, a fifth have only WhatsApp (linked, no Telegram) and a
fifth only a phone (SMS); the rest use Telegram. Each row must reach its patient on that channel and no other, and
the accounting below holds per channel (the summary's ``by_channel``).

The clock: each dispatcher process reads the system clock shifted by an offset the test hands it, so time runs
at real speed inside a run (claim leases expire in real seconds, as in production) and the schedule moves forward
between restarts. In-person visits start 09:00–11:29 Almaty, online ones 09:00–12:59; codes are due ten minutes
before a visit (and stay issuable until its window closes, 15 minutes after its end), prompts an hour after it.
The day starts at 08:45; whenever a killed run had caught up with everything due, the next run's clock moves to
25 minutes past the earliest row still pending — so a code is never more than 25 minutes late, well inside its
window, however the kills fall. Kills go on until there were at least 55 and every code is out; the final
run starts at 15:35, when every prompt is due, and delivers the rest. Sends are paced at 1,000/s overall and 10/s
per chat on every channel: the stand-ins here count no limits (keeping Telegram's is test_telegram_chaos.py's
subject), and at 30/s and 1/s per chat a run spent most of its wall time waiting for its turn to send.

Most restarts reuse the worker id ``w-main`` (the new process releases the dead one's claims at once); a quarter
use a fresh id with an 8 s lease. When such a worker died holding claims, the clock moves past that lease (no run
waits it out in real time); twice, the next run is a ``w-main`` process watched until it took those claims over.

Kill moments, from a seeded RNG, in three kinds:
- ``startup``: after 0–50 ms of the process's own CPU time from the fork (engine setup, releasing stale claims,
  the first claim: on SQLite ready at ~10 ms, stale claims released by ~25, the first claim made by ~35);
- ``timed``: after 0–1 s of its CPU time from ready (anywhere in claim → render → send → mark done);
- ``accept``: at the instant a stand-in accepts the k-th message of the run (k = 1…8, on any channel) — the
  window where Telegram, WhatsApp or the gateway has the message and the database does not know yet.
A run that catches up before its moment is killed idle (``timed-idle`` …): caught up means no row due is left that
it could take — pending, its own claim, or a claim whose lease expired; a claim a dead *other* worker still holds
is not its to take (a ``w-alt`` run after a killed ``w-main`` used to idle, polling, until that 60 s lease ran out).
Moments are counted in the dispatcher's CPU time, not in real milliseconds, so the harness runs beside other tests:
a loaded machine stretches a run's wall time, not the work it gets done. (In real milliseconds a starved run died
before it delivered anything, and the rows it held were claimed run after run until the dispatcher gave them up as
poison: every kill costs each row the run held one claim, so a run claims ``BATCH`` = 10 rows at a time, not 50.)

Exactly once per outbox id at the stand-in cannot be had across a SIGKILL in that last window: neither Telegram's
API nor WhatsApp's nor the SMS gateway's takes an idempotency key, and nothing can be asked afterwards, so the
restarted dispatcher (at-least-once) sends the row again. The test therefore demands: nothing missing, every row
``sent``, and every duplicate *explained* — each extra copy was accepted by a run that was then killed before it
could record the send, the copies came from different runs, and the row's recorded ``chat_message_id``
(``channel_message_id``: the wamid or the gateway's id) is the last copy's. It reports how many duplicates each kind
of kill produced (a warning in the pytest summary, and stdout)."""
from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime as dt
import itertools
import json
import os
import random
import re
import signal
import sqlite3
import sys
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.audit import clinic_chain, find_break
from core.codes import CodeOutcome
from core.db import tables as t
from core.db.whatsapp import whatsapp_repo
from core.iin import check_digit
from core.model import Language, OutboxKind, VerificationMethod, VisitMode, VisitState
from core.services import registry
from core.services.codes import verify_code
from core.services.visits import register_visit
from devkit.botapi import BotApiStandIn
from devkit.sms_gateway import SmsGatewayStandIn
from devkit.whatsapp import WhatsAppStandIn, add_rastau_templates
from tests.bot.dispatch_support import TOKEN

HERE = Path(__file__).parent
SCRIPT = HERE / "dispatcher_proc.py"
ROOT = HERE.parents[1]

SEED = 20261125
N_VISITS, N_IN_PERSON = 500, 300
MIN_KILLS = 55
REGISTERED_AT = dt.datetime(2026, 11, 25, 2, 0, tzinfo=dt.UTC)  # 07:00 Almaty: the clinic system books the day
FIRST_START = dt.datetime(2026, 11, 25, 4, 0, tzinfo=dt.UTC)  # visits start 09:00–12:59 Almaty
SIM_BEGIN = dt.datetime(2026, 11, 25, 3, 45, tzinfo=dt.UTC)  # the dispatcher's day starts 08:45
SIM_END = dt.datetime(2026, 11, 25, 10, 35, tzinfo=dt.UTC)  # after the last prompt is due (13:00+30+60 min)
STEP = dt.timedelta(minutes=25)  # once caught up, the schedule moves to 25 min past the next due row
LEASE_MAIN, LEASE_ALT = 60.0, 8.0
BATCH = 10  # rows a dispatcher claims at once: a kill costs each row it held one claim (the module docstring)
CLIENT_TIMEOUT = 5.0  # a send that timed out is sent again, in the same run: duplicates no kill explains. The stand-in
# answers in milliseconds, but on a loaded machine (GC pauses of this process) 1 s was too short; an 8 s lease fits 5 s
RATE_GLOBAL, RATE_PER_CHAT = 1000.0, 10.0  # sends per second, every channel: pacing is the chaos test's subject, not
# this one's (its stand-ins count no limits); at Telegram's 30/s and 1/s per chat a batch spent most of its time
# waiting for its turn, and a run's life is counted in CPU time, so waiting only stretched the test's wall time
HOLDS = 2  # times the run after an alt worker died holding claims is watched until it took them over
KILL_KINDS, KILL_WEIGHTS = ("startup", "timed", "accept"), (1, 6, 3)
STARTUP_CPU, TIMED_CPU = 0.05, 1.0  # a run's life, in seconds of its own CPU: from the fork, or from ready
POLL = 0.005  # how often a run's CPU time is read while it lives
STALLED = 120.0  # real seconds a run may go without reaching its kill moment or catching up: the test is broken
STALLED_RUNS = 20  # runs in a row without any row reaching an outcome, nor the day moving on: the test is broken
DISPUTE_CONTACT = "+77272000000"  # SMS without inbound replies says where to dispute
TELEGRAM, WHATSAPP, SMS = "telegram", "whatsapp", "sms"


def channel_of(n: int) -> str:
    """Patient n's only channel (issue 14): a fifth of those with one visit have WhatsApp, a fifth SMS alone."""
    single_visit = n < 150 or n >= 300
    if single_visit and n % 5 == 1:
        return WHATSAPP
    if single_visit and n % 5 == 3:
        return SMS
    return TELEGRAM


# --- the world ------------------------------------------------------------------------------------------------

def make_iin(n: int) -> str:
    year = 1950 + n % 55
    century = (3 if year < 2000 else 5) + n % 2
    for serial in itertools.count(n % 7000):
        first = f"{year % 100:02d}{1 + n % 12:02d}{1 + n % 28:02d}{century}{serial:04d}"
        digit = check_digit(first)
        if digit is not None:
            return first + str(digit)
    raise AssertionError("unreachable")


@dataclass
class World:
    visit_ids: list[int]
    in_person: dict[int, int]  # chat id -> the one in-person visit of that patient
    chat_of_visit: dict[int, int]  # Telegram patients' visits
    visit_at: dict[tuple[str, str], int]  # (whatsapp | sms, wa_id | phone) -> that patient's only visit
    channel_of_visit: dict[int, str]


async def build_world(ctx, rng: random.Random) -> World:
    clinics = [await registry.create_clinic(ctx, name) for name in ("Emhana No. 5", "Polyclinic No. 7")]
    doctors = {c.id: [await registry.add_doctor(ctx, c.id, f"Doctor {c.id}-{n}", f"+7701555{c.id:02d}{n:02d}")
                      for n in range(3)] for c in clinics}
    n_patients = 350  # 300 with an in-person visit; 200 with an online one (150 of them have both)
    patients = []
    for n in range(n_patients):
        clinic = clinics[n % 2]
        language = Language.KK if n % 3 == 0 else Language.RU
        patients.append((await registry.upsert_patient(ctx, clinic.id, make_iin(n), f"Patient {n}",
                                                       f"+7702{n:07d}", language)).patient)
    chat_of_patient = {p.id: 700_000 + n for n, p in enumerate(patients)}
    channel_of_patient = {p.id: channel_of(n) for n, p in enumerate(patients)}
    address_of_patient = {p.id: "".join(ch for ch in p.phone if ch.isdigit()) if channel_of_patient[p.id] == WHATSAPP
                          else p.phone for p in patients}
    async with ctx.uow() as uow:
        for p in patients:
            if channel_of_patient[p.id] == TELEGRAM:
                assert await uow.patients.set_chat(p.phone, chat_of_patient[p.id], p.language) == 1
            elif channel_of_patient[p.id] == WHATSAPP:  # the patient wrote from their number: linked
                assert await whatsapp_repo(uow).link(p.id, address_of_patient[p.id], REGISTERED_AT) == "new"
        await uow.commit()
    visit_ids, in_person, chat_of_visit, visit_at, channel_of_visit = [], {}, {}, {}, {}
    for i in range(N_VISITS):
        mode = VisitMode.IN_PERSON if i < N_IN_PERSON else VisitMode.ONLINE
        patient = patients[i if mode is VisitMode.IN_PERSON else 150 + (i - N_IN_PERSON)]
        span = 150 if mode is VisitMode.IN_PERSON else 240  # in person 09:00–11:29, online 09:00–12:59
        visit = await register_visit(
            ctx, clinic_id=patient.clinic_id, doctor_id=rng.choice(doctors[patient.clinic_id]).id,
            patient_id=patient.id, start=FIRST_START + dt.timedelta(minutes=rng.randrange(span)),
            duration=dt.timedelta(minutes=rng.choice((15, 20, 30))), mode=mode, service_code="A01.002.001")
        visit_ids.append(visit.id)
        channel = channel_of_visit[visit.id] = channel_of_patient[patient.id]
        if channel != TELEGRAM:
            assert (channel, address_of_patient[patient.id]) not in visit_at, "one visit per WhatsApp/SMS patient"
            visit_at[(channel, address_of_patient[patient.id])] = visit.id
            continue
        chat_of_visit[visit.id] = chat_of_patient[patient.id]
        if mode is VisitMode.IN_PERSON:
            in_person[chat_of_patient[patient.id]] = visit.id
    return World(visit_ids, in_person, chat_of_visit, visit_at, channel_of_visit)


# --- the dispatcher processes ---------------------------------------------------------------------------------

class ForkServer:
    """Talks to ``dispatcher_proc.py serve``: spawn a dispatcher process, learn when it is ready, reap it."""

    def __init__(self, env: dict, log_path: Path):
        self._env, self._log_path = env, log_path
        self._spawned: asyncio.Queue[int] = asyncio.Queue()
        self._ready: dict[int, asyncio.Event] = defaultdict(asyncio.Event)
        self._reaped: dict[int, asyncio.Future] = {}
        self._up = asyncio.Event()

    async def start(self) -> None:
        self._log = open(self._log_path, "ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), "serve", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=self._log, env=self._env, cwd=ROOT)
        self._reader = asyncio.create_task(self._read())
        await asyncio.wait_for(self._up.wait(), 120)

    async def _read(self) -> None:
        async for raw in self.proc.stdout:
            words = raw.decode().split()
            if words[:2] == ["zygote", "ready"]:
                self._up.set()
            elif words and words[0] == "spawned":
                self._spawned.put_nowait(int(words[1]))
            elif words and words[0] == "ready":
                self._ready[int(words[1])].set()
            elif words and words[0] == "reaped":
                self._reaped[int(words[1])].set_result(int(words[2]))

    async def _send(self, line: str) -> None:
        self.proc.stdin.write((line + "\n").encode())
        await self.proc.stdin.drain()

    async def spawn(self, worker: str, lease: float, offset: float) -> int:
        await self._send(f"spawn {worker} {lease} {offset!r}")
        return await asyncio.wait_for(self._spawned.get(), 30)

    async def wait_ready(self, pid: int, timeout: float = 30) -> bool:
        try:
            await asyncio.wait_for(self._ready[pid].wait(), timeout)
            return True
        except TimeoutError:
            return False

    def is_ready(self, pid: int) -> bool:
        return self._ready[pid].is_set()

    async def kill_and_reap(self, pid: int) -> int:
        """SIGKILL (kill -9) the dispatcher, then have the server reap it; returns the wait status."""
        kill9(pid)
        self._reaped[pid] = asyncio.get_running_loop().create_future()
        await self._send(f"reap {pid}")
        return await asyncio.wait_for(self._reaped[pid], 30)

    async def close(self) -> None:
        try:
            await self._send("quit")
            await asyncio.wait_for(self.proc.wait(), 30)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
            self._reader.cancel()
            self._log.close()


async def end_process(proc: asyncio.subprocess.Process) -> None:
    """Kill ``proc`` unless it has exited (the test failed or timed out while it ran), and reap it."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def kill9(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class Run:
    pid: int
    worker: str
    kind: str
    spawned_at: float
    killed_at: float = 0.0
    cpu: float = 0.0  # seconds of CPU it had run when killed
    ready: bool = False
    status: int | None = None


# --- what reached the stand-in --------------------------------------------------------------------------------

CODE_RE = re.compile(r"<code>(\d{6})</code>")


def classify(message, world: World) -> tuple[str, int]:
    """(kind, visit id) of a message the stand-in accepted: a prompt names its visit in its buttons; a code
    goes to a chat whose patient has exactly one in-person visit."""
    buttons = [b.get("callback_data", "") for row in (message.reply_markup or {}).get("inline_keyboard", [])
               for b in row]
    answers = {int(cb.rsplit(":", 1)[1]) for cb in buttons if cb.startswith("ans:")}
    if answers:
        assert len(answers) == 1, buttons
        visit_id = answers.pop()
        assert world.chat_of_visit[visit_id] == message.chat_id, "a prompt reached another patient's chat"
        return OutboxKind.ATTENDANCE_PROMPT, visit_id
    assert CODE_RE.search(message.text or ""), f"neither a code nor a prompt: {message.text!r}"
    return OutboxKind.VISIT_CODE, world.in_person[message.chat_id]


SMS_CODE_RE = re.compile(r"(?<!\d)(\d{6})(?!\d)")


@dataclass
class Copy:
    """One message a stand-in accepted, whichever the channel."""
    channel: str
    message_id: str
    at: float
    code: str | None  # the code in it, for a code message


def copies_at(standin, whatsapp, gateway, world: World, settings) -> dict[tuple[str, int], list[Copy]]:
    """Every accepted message mapped to its outbox row's (kind, visit id), in the order accepted per channel."""
    copies: dict[tuple[str, int], list[Copy]] = defaultdict(list)
    for message in standin.sent:
        assert message.method == "sendMessage"
        key = classify(message, world)
        code = CODE_RE.search(message.text or "")
        copies[key].append(Copy(TELEGRAM, str(message.message_id), message.at, code.group(1) if code else None))
    for sent in whatsapp.sent:
        visit_id = world.visit_at[(WHATSAPP, sent.to)]
        assert sent.template is not None, f"a WhatsApp message outside a template: {sent.type}"
        name = sent.template[0]
        assert name in (settings.whatsapp_code_template, settings.whatsapp_question_template), name
        if name == settings.whatsapp_code_template:
            code = sent.body["template"]["components"][0]["parameters"][0]["text"]
            copies[(OutboxKind.VISIT_CODE, visit_id)].append(Copy(WHATSAPP, sent.wamid, sent.at, code))
        else:
            copies[(OutboxKind.ATTENDANCE_PROMPT, visit_id)].append(Copy(WHATSAPP, sent.wamid, sent.at, None))
    for sms in gateway.sent:
        visit_id = world.visit_at[(SMS, sms.to)]
        found = SMS_CODE_RE.search(sms.text)
        kind = OutboxKind.VISIT_CODE if found else OutboxKind.ATTENDANCE_PROMPT
        copies[(kind, visit_id)].append(Copy(SMS, sms.id, sms.at, found.group(1) if found else None))
    return copies


def run_of(runs: list[Run], at: float) -> int:
    """The run a message arrived in: the last one spawned before it (runs never overlap)."""
    return bisect.bisect_right([r.spawned_at for r in runs], at) - 1


# --- the test -------------------------------------------------------------------------------------------------

@pytest.fixture
async def standin():
    api = BotApiStandIn()  # no enforced limits: pacing is the chaos test's subject; here it is crashes
    api.add_bot(TOKEN, "rastau_test_bot")
    await api.start()
    yield api
    await api.stop()


@pytest.fixture
async def whatsapp():
    api = WhatsAppStandIn()  # no webhook: statuses are not this test's subject
    add_rastau_templates(api)
    await api.start()
    yield api
    await api.stop()


@pytest.fixture
async def gateway():
    sms = SmsGatewayStandIn()
    await sms.start()
    yield sms
    await sms.stop()


def child_env(db_url: str, settings, standin, whatsapp=None, gateway=None) -> dict:
    channels = {}
    if whatsapp is not None:
        channels.update(whatsapp_phone_number_id=whatsapp.phone_number_id, whatsapp_access_token=whatsapp.access_token,
                        whatsapp_app_secret=whatsapp.app_secret, whatsapp_verify_token="crash-verify-token",
                        whatsapp_api_base=whatsapp.base_url, whatsapp_rate=RATE_GLOBAL,
                        whatsapp_rate_per_recipient=RATE_PER_CHAT)
    if gateway is not None:
        channels.update(sms_gateway_url=gateway.base_url, sms_login=gateway.login, sms_password=gateway.password,
                        sms_dispute_contact=DISPUTE_CONTACT, sms_timeout_seconds=CLIENT_TIMEOUT,
                        sms_rate=RATE_GLOBAL)
    config = {
        "settings": {"mode": "dev", "database_url": db_url,
                     "code_hmac_key": settings.code_hmac_key.get_secret_value(),
                     "template_key": settings.template_key.get_secret_value(),
                     "api_key_pepper": settings.api_key_pepper.get_secret_value(), **channels},
        "base_url": standin.base_url, "token": TOKEN, "timeout": CLIENT_TIMEOUT,
        "rate_global": RATE_GLOBAL, "rate_per_chat": RATE_PER_CHAT, "batch": BATCH, "idle": 0.1, "log_level": "WARNING",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("RASTAU_")}
    env["RASTAU_CRASH_CONFIG"] = json.dumps(config)
    env["PYTHONPATH"] = str(ROOT)
    return env


async def outbox_rows(ctx) -> list:
    async with ctx.uow(read_only=True) as uow:
        return list((await uow.conn.execute(sa.select(t.outbox).order_by(t.outbox.c.id))).all())


async def outstanding(ctx, kind: str | None = None, due_by: dt.datetime | None = None) -> int:
    """Rows not delivered yet (pending or claimed), of one kind and/or due by a moment."""
    o = t.outbox
    cond = o.c.status.in_(("pending", "sending"))
    if kind is not None:
        cond = sa.and_(cond, o.c.kind == kind)
    if due_by is not None:
        cond = sa.and_(cond, o.c.due_at <= due_by)
    async with ctx.uow(read_only=True) as uow:
        return (await uow.conn.execute(sa.select(sa.func.count()).select_from(o).where(cond))).scalar_one()


async def workable(ctx, worker: str, now: dt.datetime) -> int:
    """Rows due by ``now`` that a dispatcher running as ``worker`` has to do: pending ones, its own claims, and
    claims whose lease has expired. Claims a dead *other* worker still holds are not its work (it cannot take them
    until their lease expires): a run left with only those has caught up."""
    o = t.outbox
    cond = sa.or_(sa.and_(o.c.status == "pending", o.c.due_at <= now),
                  sa.and_(o.c.status == "sending", sa.or_(o.c.claimed_by == worker, o.c.claim_expires_at < now)))
    async with ctx.uow(read_only=True) as uow:
        return (await uow.conn.execute(sa.select(sa.func.count()).select_from(o).where(cond))).scalar_one()


async def earliest_pending(ctx) -> dt.datetime | None:
    async with ctx.uow(read_only=True) as uow:
        return (await uow.conn.execute(sa.select(sa.func.min(t.outbox.c.due_at)).where(
            t.outbox.c.status == "pending"))).scalar_one()


async def claimed_by(ctx, worker: str) -> set[int]:
    async with ctx.uow(read_only=True) as uow:
        rows = (await uow.conn.execute(sa.select(t.outbox.c.id).where(sa.and_(
            t.outbox.c.status == "sending", t.outbox.c.claimed_by == worker)))).all()
    return {r.id for r in rows}


async def finished_rows(ctx) -> int:
    """Rows with an outcome (neither pending nor claimed): how far delivery has got."""
    async with ctx.uow(read_only=True) as uow:
        return (await uow.conn.execute(sa.select(sa.func.count()).select_from(t.outbox).where(
            t.outbox.c.status.not_in(("pending", "sending"))))).scalar_one()


def cpu_seconds(pid: int) -> float:
    """The CPU time a process has run so far (Linux's schedstat, in nanoseconds)."""
    with open(f"/proc/{pid}/schedstat") as stat:
        return int(stat.read().split()[0]) / 1e9


def sim_now(offset: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(time.time() + offset, dt.UTC)


async def live_until(ctx, pid: int, worker: str, offset: float, *, cpu: float | None = None, since: float = 0.0,
                     fired: asyncio.Event | None = None) -> bool:
    """Let a dispatcher run until its own CPU time reaches ``since + cpu`` or ``fired`` is set: True; False when it
    caught up with everything due first (it is then killed idle). CPU time, not real time: see the module docstring."""
    stalled_at = time.monotonic() + STALLED
    idle_check = 0.0
    while fired is None or not fired.is_set():
        if cpu is not None and cpu_seconds(pid) >= since + cpu:
            return True
        if time.monotonic() >= idle_check:  # ten times a second: is anything due left undone?
            if not await workable(ctx, worker, sim_now(offset)):
                return False
            idle_check = time.monotonic() + 0.1
        assert time.monotonic() < stalled_at, f"a dispatcher ran {STALLED} s without doing its work"
        await asyncio.sleep(POLL)
    return True


async def until_taken_over(ctx, worker: str) -> None:
    """Wait until no row is claimed by ``worker`` (dead: only another dispatcher can take its claims)."""
    stalled_at = time.monotonic() + STALLED
    while await claimed_by(ctx, worker):
        assert time.monotonic() < stalled_at, f"claims of the dead {worker} outlived their lease"
        await asyncio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(600)  # 55 kill -9s, 800 rows: ~1 minute alone, 2-3.5 beside both backends and chaos at load 8-10
async def test_kill_9_during_delivery_loses_nothing(db_url, engine, settings, ctx, standin, whatsapp, gateway,
                                                   tmp_path):
    started = time.monotonic()
    rng = random.Random(SEED)
    ctx.clock.set(REGISTERED_AT)
    world = await build_world(ctx, rng)
    for channel, address in world.visit_at:
        if channel == WHATSAPP:
            whatsapp.add_user(address)
    env = child_env(db_url, settings, standin, whatsapp, gateway)
    rows = await outbox_rows(ctx)
    assert Counter(r.kind for r in rows) == {OutboxKind.VISIT_CODE: N_IN_PERSON, OutboxKind.ATTENDANCE_PROMPT: N_VISITS}
    registered = time.monotonic()

    server = ForkServer(env, tmp_path / "dispatchers.log")
    await server.start()
    # the final run (below) is exec'd now: it imports while the kill phase goes on, then waits on stdin for its clock
    final_log = open(tmp_path / "final.log", "wb")  # closed once the final run is done
    final = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), "run", "--worker-id", "w-main", "--lease", str(LEASE_MAIN),
        "--offset-from-stdin", "--until-drained", env=env, cwd=ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=final_log)
    offset = SIM_BEGIN.timestamp() - time.time()
    runs: list[Run] = []
    reclaimed_after_lease: set[int] = set()
    try:
        hold_for, holds, stalled_runs, finished = None, 0, 0, 0
        while len(runs) < MIN_KILLS or await outstanding(ctx, OutboxKind.VISIT_CODE):
            assert stalled_runs < STALLED_RUNS, (f"{stalled_runs} runs in a row did nothing: dispatchers never ready?",
                                                 (tmp_path / "dispatchers.log").read_text()[-3000:])
            before = (finished, offset)
            holding = hold_for is not None
            if holding:
                kind, worker = "lease", "w-main"
            else:
                kind = rng.choices(KILL_KINDS, KILL_WEIGHTS)[0]
                worker = "w-main" if rng.random() < 0.75 else f"w-alt-{len(runs)}"
            stale = await claimed_by(ctx, hold_for) if holding else set()
            pid = await server.spawn(worker, LEASE_MAIN if worker == "w-main" else LEASE_ALT, offset)
            run = Run(pid, worker, kind, time.monotonic())
            runs.append(run)
            if kind == "startup":
                if not await live_until(ctx, pid, worker, offset, cpu=rng.uniform(0.0, STARTUP_CPU)):
                    run.kind = "startup-idle"
            elif kind == "timed":
                if await server.wait_ready(pid):
                    if not await live_until(ctx, pid, worker, offset, cpu=rng.uniform(0.0, TIMED_CPU),
                                            since=cpu_seconds(pid)):
                        run.kind = "timed-idle"
            elif kind == "lease":
                if await server.wait_ready(pid):
                    await until_taken_over(ctx, hold_for)
            else:  # accept: die the moment the stand-in has accepted the k-th message of this run
                k = rng.randint(1, 8)
                fired = asyncio.Event()
                accepted = 0

                def on_accept(_message: object, pid=pid, k=k, fired=fired) -> None:
                    nonlocal accepted
                    accepted += 1
                    if accepted == k:
                        kill9(pid)
                        fired.set()

                if await server.wait_ready(pid):
                    standin.echo = whatsapp.echo = gateway.echo = on_accept  # the k-th on any channel
                    try:
                        if not await live_until(ctx, pid, worker, offset, fired=fired):
                            run.kind = "accept-idle"  # fewer than k messages were due: killed when idle
                    finally:
                        standin.echo = whatsapp.echo = gateway.echo = None
            run.ready = server.is_ready(pid)
            run.killed_at, run.cpu = time.monotonic(), cpu_seconds(pid)
            run.status = await server.kill_and_reap(pid)
            if holding:
                still = await claimed_by(ctx, hold_for)
                assert not still, f"claims of the dead {hold_for} outlived their lease: {sorted(still)}"
                reclaimed_after_lease |= stale
                hold_for, holds = None, holds + 1
            elif worker != "w-main" and await claimed_by(ctx, worker):  # it died holding claims: the clock moves
                offset += LEASE_ALT + 0.5  # past its lease, so no run waits it out; twice, the next run is watched
                hold_for = worker if holds < HOLDS else None  # until it took them over
            if run.ready and hold_for is None:  # the day moves on once the dispatcher has caught up
                if not await outstanding(ctx, due_by=sim_now(offset)):
                    next_due = await earliest_pending(ctx)
                    if next_due is not None:
                        offset = max(offset, (next_due + STEP).timestamp() - time.time())
            finished = await finished_rows(ctx)
            stalled_runs = stalled_runs + 1 if (finished, offset) == before else 0
    except BaseException:
        await end_process(final)
        final_log.close()
        raise
    finally:
        for run in runs:
            if run.status is None:  # the test failed while this one ran
                kill9(run.pid)
        await server.close()
    kill_phase = time.monotonic()

    # the last restart: a freshly exec'd dispatcher at the end of the day, left alone until the outbox is empty
    offset = max(offset, SIM_END.timestamp() - time.time())
    runs.append(Run(final.pid, "w-main", "final", time.monotonic()))  # it sends nothing before its offset comes
    try:
        out, _ = await asyncio.wait_for(final.communicate(f"{offset!r}\n".encode()), 180)
    finally:
        await end_process(final)
        final_log.close()
    assert final.returncode == 0, (tmp_path / "final.log").read_text()[-3000:]
    assert b"drained" in out
    finished = time.monotonic()

    # --- every process died by our hand, and only by it
    statuses = Counter(r.status for r in runs[:-1])
    assert all(os.WIFSIGNALED(s) and os.WTERMSIG(s) == signal.SIGKILL for s in statuses), (
        statuses, (tmp_path / "dispatchers.log").read_text()[-3000:])
    kills = len(runs) - 1
    assert kills >= 50
    assert reclaimed_after_lease, "no claim was ever taken over after its lease expired"

    # --- every row sent; each accepted message mapped to its row
    rows = {(r.kind, r.visit_id): r for r in await outbox_rows(ctx)}
    not_sent = [(r.id, r.kind, r.status, r.attempts, r.last_error) for r in rows.values() if r.status != "sent"]
    assert not not_sent, (len(not_sent), Counter((x[1], x[2]) for x in not_sent), not_sent[:5])
    copies = copies_at(standin, whatsapp, gateway, world, settings)
    missing = sorted(set(rows) - set(copies))
    assert not missing, f"{len(missing)} rows marked sent never reached the stand-in: {missing[:10]}"
    assert set(copies) == set(rows)

    # --- duplicates: count them, and prove each one came from a run killed before it could record the send
    duplicates_by_kind: Counter = Counter()
    by_channel: dict[str, Counter] = defaultdict(Counter)
    unexplained = []
    for key, sent in copies.items():
        row = rows[key]
        channel = world.channel_of_visit[key[1]]
        assert {c.channel for c in sent} == {channel}, f"{key}: sent on {[c.channel for c in sent]}, not {channel}"
        recorded = str(row.chat_message_id) if channel == TELEGRAM else row.channel_message_id
        assert sent[-1].message_id == recorded, f"{key}: the row records another copy than the last"
        if channel != TELEGRAM:
            assert row.channel == channel, (key, row.channel, row.channel_note)
        by_channel[channel].update(rows=1, delivered=len(sent), duplicates=len(sent) - 1)
        by_channel[channel]["max_claims"] = max(by_channel[channel]["max_claims"], row.attempts)
        run_ids = [run_of(runs, m.at) for m in sent]
        if len(set(run_ids)) != len(run_ids):
            unexplained.append((key, "two copies in one run", [runs[j].kind for j in run_ids]))
        for j in run_ids[:-1]:
            if runs[j].kind == "final":
                unexplained.append((key, "an earlier copy came from the run that was not killed"))
            duplicates_by_kind[runs[j].kind] += 1
    assert not unexplained, unexplained[:10]
    duplicates = sum(duplicates_by_kind.values())

    # --- codes: the patient's last code is the valid one; every earlier copy was superseded
    async with ctx.uow(read_only=True) as uow:
        code_rows = {r.visit_id: r for r in (await uow.conn.execute(sa.select(t.visit_codes))).all()}
    for (kind, visit_id), sent in copies.items():
        if kind != OutboxKind.VISIT_CODE:
            continue
        current = code_rows[visit_id]
        codes = [c.code for c in sent]
        assert ctx.hasher.matches(visit_id, current.generation, codes[-1], current.code_hash)
        assert not any(ctx.hasher.matches(visit_id, current.generation, c, current.code_hash) for c in codes[:-1])
    sample = [v for (kind, v), sent in copies.items() if kind == OutboxKind.VISIT_CODE and len(sent) > 1]
    sample += rng.sample([v for (kind, v) in copies if kind == OutboxKind.VISIT_CODE], 40)
    async with ctx.uow(read_only=True) as uow:
        clinic_of = {v.id: v.clinic_id for v in (await uow.conn.execute(sa.select(t.visits))).all()}
    for visit_id in dict.fromkeys(sample):
        last = copies[(OutboxKind.VISIT_CODE, visit_id)][-1].code
        ctx.clock.set(code_rows[visit_id].issued_at + dt.timedelta(seconds=30))
        check = await verify_code(ctx, clinic_of[visit_id], visit_id, last)
        assert check.outcome is CodeOutcome.VERIFIED, (visit_id, check)

    # --- no visit in an impossible state
    await assert_visits_consistent(ctx, verified=set(sample))
    async with ctx.uow(read_only=True) as uow:
        heads = {head.chain: head for head in await uow.audit.heads()}
        chains = {chain: await uow.audit.records(chain) for chain in await uow.audit.chains()}
    assert [find_break(chain, records, heads.get(chain)) for chain, records in chains.items()] == [None] * len(chains)
    assert {clinic_chain(clinic_id) for clinic_id in clinic_of.values()} <= set(heads)  # each clinic its chain
    if db_url.startswith("sqlite"):
        path = db_url.split(":///", 1)[1]
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []

    by_kind = Counter(r.kind for r in runs[:-1])
    summary = {
        "backend": db_url.split("+", 1)[0], "visits": N_VISITS, "outbox_rows": len(rows),
        "kills": kills, "kills_by_kind": dict(by_kind),
        "workers": dict(Counter("w-main" if r.worker == "w-main" else "w-alt" for r in runs[:-1])),
        "claims_taken_over_after_lease_expiry": len(reclaimed_after_lease),
        "delivered": sum(len(sent) for sent in copies.values()), "missing": len(missing), "duplicates": duplicates,
        "by_channel": {channel: dict(counts) for channel, counts in sorted(by_channel.items())},
        "max_claims_of_one_row": max(r.attempts for r in rows.values()),
        "dispatcher_cpu_seconds": round(sum(r.cpu for r in runs[:-1]), 1),
        "duplicates_by_kill_kind": dict(duplicates_by_kind),
        "seconds": {"register": round(registered - started, 1), "kill_phase": round(kill_phase - registered, 1),
                    "final_run": round(finished - kill_phase, 1)},
    }
    print("\ncrash-delivery:", json.dumps(summary))
    if duplicates:
        warnings.warn(f"crash-delivery on {summary['backend']}: {duplicates} duplicate message(s) at the stand-in "
                      f"over {kills} kill -9s ({dict(duplicates_by_kind)} by kill kind) — each one accepted by a run "
                      f"killed before it recorded the send; no channel takes an idempotency key, so at-least-once "
                      f"delivery repeats these. Per channel: {summary['by_channel']}. Missing: 0.", stacklevel=1)


async def assert_visits_consistent(ctx, verified: set[int]) -> None:
    async with ctx.uow(read_only=True) as uow:
        visits = (await uow.conn.execute(sa.select(t.visits))).all()
        events = (await uow.conn.execute(sa.select(t.visit_events).order_by(t.visit_events.c.id))).all()
        used = {r.visit_id: r.used_at for r in (await uow.conn.execute(sa.select(t.visit_codes))).all()}
    chain: dict[int, list] = defaultdict(list)
    for e in events:
        chain[e.visit_id].append(e)
    states = {s.value for s in VisitState}
    assert len(visits) == N_VISITS
    for v in visits:
        assert v.state in states, v
        if v.state == VisitState.VERIFIED.value:
            assert v.verified_by in {m.value for m in VerificationMethod} and v.verified_at is not None, v
        else:
            assert v.verified_by is None and v.verified_at is None, v
        assert v.state == (VisitState.VERIFIED.value if v.id in verified else VisitState.SCHEDULED.value), v
        if v.verified_by == VerificationMethod.CODE.value:
            assert used.get(v.id) is not None, v
        moves = [e for e in chain[v.id] if e.from_state != e.to_state]
        assert moves and moves[0].step == "register" and moves[0].from_state is None, v
        for prev, nxt in itertools.pairwise(moves):
            assert nxt.from_state == prev.to_state, (v.id, prev, nxt)
        assert moves[-1].to_state == v.state, v


async def test_claims_left_by_crashed_dispatchers_do_not_spend_the_retry_budget(ctx, standin):
    """Only failed sends count against the retry budget: a dozen crashed claims, then one Telegram 500,
    and the message still goes out once."""
    from bot.delivery.dispatcher import MAX_FAILURES as MAX_ATTEMPTS
    from bot.delivery.dispatcher import OutboxDispatcher
    from tests.bot.dispatch_support import EchoRenderer, make_bot, queue

    message_id = await queue(ctx, 4242, "after many crashes")
    for n in range(MAX_ATTEMPTS):  # what a dispatcher killed after its claim leaves behind, twelve times over
        async with ctx.uow() as uow:
            assert [r.id for r in await uow.outbox.claim_due(ctx.clock.now(), f"dead-{n}",
                                                             dt.timedelta(seconds=60), 10)] == [message_id]
            await uow.commit()
        ctx.clock.advance(dt.timedelta(seconds=61))  # its lease expires
    standin.fail_next(1, "500")  # then one transient error from Telegram
    bot = make_bot(standin.base_url)
    try:
        dispatcher = OutboxDispatcher(ctx, bot, EchoRenderer(), worker_id="alive")
        for _ in range(3):
            await dispatcher.drain()
            ctx.clock.advance(dt.timedelta(minutes=15))
    finally:
        await bot.session.close()
    async with ctx.uow(read_only=True) as uow:
        row = await uow.outbox.get(message_id)
    assert row.status == "sent", f"{row.status}: {row.last_error}"
    assert [m.text for m in standin.messages_to(4242)] == [f"after many crashes #{message_id}"]
