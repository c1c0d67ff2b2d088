"""WhatsApp's inbound side (issue 14), transport-free: the webhook's events queued durably, then handled one by one.

- A message proves its sender's phone (WhatsApp's ``wa_id``): every patient registered with that phone is linked to
  WhatsApp at once and asked to choose a language; an unknown number is answered politely and nothing is linked.
- Every inbound message opens the 24-hour window (``patient_channels.last_inbound_at``).
- "Were you there?" buttons carry the visit and the answer signed for the recipient's wa_id (:func:`button_payload`):
  a forged or copied button answers nothing. The answer goes through the same visit services as Telegram's buttons,
  and the same rules: "I wasn't there" is asked once more before anything is recorded (issue 17), and the patient's
  next message within ``dispute_reason_minutes`` is taken as the reason.
- Statuses are recorded on the outbox row; a message that failed for the window (131047) or the recipient (131026)
  goes back to the queue to be sent as a template or on the next channel.
"""
from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from core.db.whatsapp import whatsapp_repo
from core.errors import DomainError, InvalidPhone, NotFound
from core.logs import get_logger
from core.model import Language
from core.phone import normalise_phone
from core.services import Context
from core.services.dispute_answers import Audience, ReasonTooLate, check_disputable, reason_window
from core.services.visit_lists import VisitLine
from core.services.visits import explain_dispute, patient_confirms, patient_disputes

log = get_logger("rastau.whatsapp")

REENGAGE = 131047  # outside the 24-hour window
UNDELIVERABLE = 131026  # no WhatsApp account, or the number cannot receive
WINDOW = dt.timedelta(hours=24)
WINDOW_MARGIN = dt.timedelta(minutes=5)  # our clock and Meta's may differ a little: close the window early
LANGUAGE_PREFIX = "lang:"
ANSWER_PREFIX = "v1"


class Reply(str, enum.Enum):
    """What the bot answers an inbound message with (worded by the bot, in ``language``)."""
    CHOOSE_LANGUAGE = "choose_language"  # just linked: the kk/ru buttons
    UNKNOWN_NUMBER = "unknown_number"  # no patient registered with this phone (kk and ru together)
    LANGUAGE_SET = "language_set"
    ATTENDED = "attended"
    CONFIRM_DISPUTE = "confirm_dispute"  # "you were NOT there, right?" with its two buttons
    DISPUTED = "disputed"  # recorded; who heard of it; the patient may write why
    KEPT = "kept"  # went back: nothing recorded
    REASON_ADDED = "reason_added"
    REASON_LATE = "reason_late"
    ALREADY = "already"  # the answer was recorded before; nothing changed
    NOT_ANSWERABLE = "not_answerable"  # the visit cannot take this answer now (not finished, final, ...)
    BAD_BUTTON = "bad_button"  # a forged, copied or unknown button: nothing changed
    HELP = "help"  # a linked patient wrote something else


@dataclass(frozen=True)
class Outcome:
    wa_id: str
    reply: Reply | None
    language: Language | None  # None: both languages (the sender is unknown)
    visit: VisitLine | None = None  # the visit a CONFIRM_DISPUTE asks about
    audience: Audience | None = None  # who heard of a dispute or its reason


# The answers a button can carry: y "I was there", n "I wasn't there" (asks once more), x "yes, I really wasn't
# there" (records it), k "no, go back" (records nothing).
ANSWERS = ("y", "n", "x", "k")


def _key(ctx: Context) -> bytes:
    return hmac.new(ctx.settings.code_key_bytes(), b"rastau/whatsapp-button/v1", hashlib.sha256).digest()


def _mac(ctx: Context, visit_id: int, answer: str, wa_id: str) -> str:
    return hmac.new(_key(ctx), f"{visit_id}:{answer}:{wa_id}".encode(), hashlib.sha256).hexdigest()[:24]


def button_payload(ctx: Context, visit_id: int, answer: bool | str, wa_id: str) -> str:
    """The payload of one answer to one visit, for one recipient: ``v1:<visit>:<answer>:<mac>`` (``answer``: one of
    ANSWERS; True/False for the question's y/n)."""
    letter = answer if isinstance(answer, str) else ("y" if answer else "n")
    if letter not in ANSWERS:
        raise ValueError(f"unknown answer {letter!r}")
    return f"{ANSWER_PREFIX}:{visit_id}:{letter}:{_mac(ctx, visit_id, letter, wa_id)}"


def read_button(ctx: Context, payload: str, wa_id: str) -> tuple[int, str] | None:
    """(visit id, answer letter) from a payload signed for this wa_id; None for anything else."""
    parts = payload.split(":")
    if len(parts) != 4 or parts[0] != ANSWER_PREFIX or not parts[1].isdigit() or parts[2] not in ANSWERS:
        return None
    visit_id = int(parts[1])
    if not hmac.compare_digest(parts[3].encode(), _mac(ctx, visit_id, parts[2], wa_id).encode()):
        return None
    return visit_id, parts[2]


def events_of(body: dict[str, Any], phone_number_id: str | None) -> list[tuple[str, dict[str, Any]]]:
    """The messages and statuses in one (already authenticated) webhook body, each with its id for dedupe. Only
    those about our own business number: one Meta app may serve other numbers too."""
    events: list[tuple[str, dict[str, Any]]] = []
    for entry in body.get("entry") or []:
        for change in (entry or {}).get("changes") or []:
            value = (change or {}).get("value") or {}
            if change.get("field") != "messages" or not isinstance(value, dict):
                continue
            if str((value.get("metadata") or {}).get("phone_number_id")) != str(phone_number_id):
                continue
            for message in value.get("messages") or []:
                if isinstance(message, dict) and message.get("id") and message.get("from"):
                    events.append((f"msg:{message['id']}", {"kind": "message", **message}))
            for status in value.get("statuses") or []:
                if isinstance(status, dict) and status.get("id") and status.get("status"):
                    events.append((f"status:{status['id']}:{status['status']}", {"kind": "status", **status}))
    return events


async def queue_events(ctx: Context, events: list[tuple[str, dict[str, Any]]]) -> int:
    """Store the events for the worker, all or none; a replayed id is ignored. Answers how many were new."""
    now = ctx.clock.now()
    new = 0
    async with ctx.uow() as uow:
        for external_id, event in events:
            new += await whatsapp_repo(uow).enqueue(external_id, json.dumps(event, ensure_ascii=False), now)
        await uow.commit()
    return new


async def pending_events(ctx: Context, limit: int = 100) -> list[tuple[str, dict[str, Any]]]:
    async with ctx.uow() as uow:
        rows = await whatsapp_repo(uow).pending(limit)
    return [(r.external_id, json.loads(r.payload)) for r in rows]


async def handle_event(ctx: Context, external_id: str, event: dict[str, Any]) -> tuple[bool, Outcome | None]:
    """Handle one queued event and mark it handled: (whether this worker handled it, what to answer, if anything).

    At least once, and once per worker: on PostgreSQL the event's row stays locked (FOR UPDATE SKIP LOCKED) while it
    is handled, so a second bot instance skips it; a crash before "handled" leaves it for the next round, and each
    step is safe to repeat (linking, a language, an answer the visit already has, a status that does not move
    forward). SQLite runs one bot process, which handles its queue in order."""
    guard = ctx.uow()
    if not guard.row_locks:
        outcome = await _handle(ctx, event)
        async with ctx.uow() as uow:
            await whatsapp_repo(uow).mark_handled(external_id, ctx.clock.now())
            await uow.commit()
        return True, outcome
    async with guard:
        if not await whatsapp_repo(guard).lock_pending(external_id):
            return False, None  # another worker holds it, or handled it already
        outcome = await _handle(ctx, event)
        await whatsapp_repo(guard).mark_handled(external_id, ctx.clock.now())
        await guard.commit()
    return True, outcome


async def _handle(ctx: Context, event: dict[str, Any]) -> Outcome | None:
    if event.get("kind") == "status":
        await _status(ctx, event)
        return None
    return await _message(ctx, event)


def _at(event: dict[str, Any], ctx: Context) -> dt.datetime:
    """The event's own time, but never later than ours (a sender's clock must not stretch the window)."""
    now = ctx.clock.now()
    try:
        at = dt.datetime.fromtimestamp(int(event.get("timestamp", "")), dt.UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return now
    return min(at, now)


async def _status(ctx: Context, event: dict[str, Any]) -> None:
    wamid, status = str(event["id"]), str(event["status"])
    if status not in ("sent", "delivered", "read", "failed"):
        return
    recipient = "".join(ch for ch in str(event.get("recipient_id", "")) if ch.isdigit())
    codes = {int(e["code"]) for e in event.get("errors") or [] if isinstance(e, dict) and str(e.get("code")).isdigit()}
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        repo = whatsapp_repo(uow)
        row = await repo.outbox_row(wamid)
        if row is None:
            return
        moved = await repo.record_status(wamid, status, _at(event, ctx))
        if status == "failed" and moved:  # a failure after "delivered" or "read" is stale: it changes nothing
            code = min(codes) if codes else 0
            if code == REENGAGE:
                await repo.close_window(recipient)
                await repo.send_again(row.id, now, "whatsapp 131047: outside the 24-hour window, sent again")
            elif code == UNDELIVERABLE:
                await repo.mark_gone(recipient, "whatsapp 131026: no account or undeliverable", now)
                await repo.send_again(row.id, now, "whatsapp 131026: undeliverable, next channel")
            log.warning("whatsapp message failed", outbox_id=row.id, meta_error=code)
        await uow.commit()


async def _message(ctx: Context, event: dict[str, Any]) -> Outcome | None:
    wa_id = "".join(ch for ch in str(event.get("from", "")) if ch.isdigit())
    try:
        phone = normalise_phone(wa_id)
    except InvalidPhone:
        return Outcome(wa_id, Reply.UNKNOWN_NUMBER, None)
    at, now = _at(event, ctx), ctx.clock.now()
    async with ctx.uow() as uow:
        patients = await uow.patients.by_phone(phone)
        ids = [p.id for p in patients if p.id is not None]
        if not ids:
            await uow.commit()
            return Outcome(wa_id, Reply.UNKNOWN_NUMBER, None)
        links = {pid: await whatsapp_repo(uow).link(pid, wa_id, at) for pid in ids}
        newly = [pid for pid, how in links.items() if how == "new"]
        held = [pid for pid, how in links.items() if how == "held"]
        for action, chosen, details in (
                ("whatsapp.link", newly, {"proof": "wa_id of the sender equals the registered phone"}),
                ("whatsapp.link_refused", held, {"why": "the patient's WhatsApp at another number still works"})):
            for clinic_id in sorted({p.clinic_id for p in patients if p.id in chosen}):
                await uow.audit.append(now, "patient", action, "patients:" + ",".join(
                    str(p.id) for p in patients if p.id in chosen and p.clinic_id == clinic_id), details,
                    clinic_id=clinic_id)
        await uow.commit()
    if held:
        log.warning("whatsapp link refused: the patient's WhatsApp at another number still works", patients=len(held))
    ids = [pid for pid in ids if pid not in held]
    if not ids:
        return Outcome(wa_id, None, None)  # nothing to say to a number that is not the patient's channel
    language = next(p.language for p in patients if p.id in ids)
    if newly:
        return Outcome(wa_id, Reply.CHOOSE_LANGUAGE, language)
    payload = _button(event)
    if payload is None:
        return await _maybe_reason(ctx, wa_id, ids, language, event)
    if payload.startswith(LANGUAGE_PREFIX):
        choice = payload[len(LANGUAGE_PREFIX):]
        if choice not in {lang.value for lang in Language}:
            return Outcome(wa_id, Reply.BAD_BUTTON, language)
        async with ctx.uow() as uow:
            await whatsapp_repo(uow).set_language(ids, choice, now)
            await uow.commit()
        return Outcome(wa_id, Reply.LANGUAGE_SET, Language(choice))
    answer = read_button(ctx, payload, wa_id)
    if answer is None:
        log.warning("whatsapp button refused: not signed for this sender")
        return Outcome(wa_id, Reply.BAD_BUTTON, language)
    visit_id, letter = answer
    if letter == "k":
        return Outcome(wa_id, Reply.KEPT, language)
    async with ctx.uow() as uow:
        proven = await whatsapp_repo(uow).patients_at(wa_id)
    try:
        if letter == "n":
            line = await check_disputable(ctx, visit_id, proven)
            if line is None:
                return Outcome(wa_id, Reply.ALREADY, language)
            return Outcome(wa_id, Reply.CONFIRM_DISPUTE, language, visit=line)
        result = await (patient_confirms if letter == "y" else patient_disputes)(ctx, visit_id, proven)
    except DomainError as exc:
        log.info("whatsapp answer not recorded", visit_id=visit_id, reason=type(exc).__name__)
        return Outcome(wa_id, Reply.BAD_BUTTON if isinstance(exc, NotFound) else Reply.NOT_ANSWERABLE, language)
    if not result.changed:
        return Outcome(wa_id, Reply.ALREADY, language)
    if letter == "y":
        return Outcome(wa_id, Reply.ATTENDED, language)
    return Outcome(wa_id, Reply.DISPUTED, language, audience=result.told)


async def _maybe_reason(ctx: Context, wa_id: str, patient_ids: list[int], language: Language,
                        event: dict[str, Any]) -> Outcome:
    """A text from a linked patient: the reason for a dispute they made within the reason window, else help."""
    text = str((event.get("text") or {}).get("body") or "").strip() if event.get("type") == "text" else ""
    if not text:
        return Outcome(wa_id, Reply.HELP, language)
    async with ctx.uow() as uow:
        proven = await whatsapp_repo(uow).patients_at(wa_id)
        visit_id = await whatsapp_repo(uow).awaiting_reason(proven, ctx.clock.now() - reason_window(ctx.settings))
    if visit_id is None:
        return Outcome(wa_id, Reply.HELP, language)
    try:
        result = await explain_dispute(ctx, visit_id, proven, text)
    except ReasonTooLate:
        return Outcome(wa_id, Reply.REASON_LATE, language)
    except DomainError as exc:
        log.info("whatsapp reason not recorded", visit_id=visit_id, reason=type(exc).__name__)
        return Outcome(wa_id, Reply.HELP, language)
    return Outcome(wa_id, Reply.REASON_ADDED, language, audience=result.told)


def _button(event: dict[str, Any]) -> str | None:
    if event.get("type") == "button":
        return str((event.get("button") or {}).get("payload") or "") or None
    if event.get("type") == "interactive":
        reply = (event.get("interactive") or {}).get("button_reply") or {}
        return str(reply.get("id") or "") or None
    return None


async def window_open(ctx: Context, patient_id: int) -> bool:
    """Whether a free-form message may go to this patient now: their last WhatsApp message is under 24 hours old
    (less a margin for clocks)."""
    async with ctx.uow() as uow:
        last = await whatsapp_repo(uow).last_inbound(patient_id)
    return last is not None and ctx.clock.now() - last < WINDOW - WINDOW_MARGIN
