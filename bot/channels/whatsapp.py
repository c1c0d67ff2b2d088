"""The WhatsApp channel (issue 14): codes, "were you there?" and notices over the Cloud API, its webhook, and the
worker that handles what the webhook queued.

- Codes go as the authentication template (the code as its body parameter and on its copy-code button); the
  question as the utility template with two quick-reply buttons whose payloads are signed for the recipient
  (core.services.whatsapp.button_payload); notices as free text only inside the 24-hour window, else as the notice
  template. Template names and language codes come from settings.
- Sends are paced per business number (``whatsapp_rate``) and per recipient by the one `SendPacer`.
- Error codes: 130429 (rate limit: pause everyone, retry), 131056 (this pair: retry later), 131047 (outside the
  window: the notice goes again as a template), 131026 (no account: the channel is gone, the dispatcher falls back),
  template refusals (132000, 132001, 131009...: refused), the rest retried.
- The webhook answers the GET handshake, checks ``X-Hub-Signature-256`` over the raw body in constant time before
  anything is parsed, queues the events durably and answers 200; the worker handles them afterwards.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import math
import re
from contextlib import suppress
from typing import Any

from aiogram.utils.i18n import I18n
from aiohttp import web

from bot import dispute_texts
from bot.channels.base import (
    Address,
    Answer,
    AnswerKind,
    AttendanceQuestion,
    ChannelGone,
    ChannelName,
    ChannelRefused,
    ChannelRetry,
    CodeMessage,
    InboundMessage,
    Notice,
    Sent,
)
from bot.channels.whatsapp_api import WhatsAppApi, WhatsAppApiError
from bot.delivery.limits import Pacer, SendPacer
from bot.delivery.shared_limits import SharedSendPacer
from bot.i18n import _, when
from core.errors import DatabaseUnavailable
from core.logs import get_logger
from core.services import Context
from core.services.dispute_answers import Audience
from core.services.whatsapp import (
    LANGUAGE_PREFIX,
    Outcome,
    Reply,
    button_payload,
    events_of,
    handle_event,
    pending_events,
    queue_events,
    read_button,
    window_open,
)

log = get_logger("rastau.whatsapp")

RATE_LIMIT, PAIR_LIMIT, REENGAGE, UNDELIVERABLE = 130429, 131056, 131047, 131026
GONE = {UNDELIVERABLE, 131030, 131021}  # undeliverable, not in the allowed list, sender is the recipient
REFUSED = {100, 131008, 131009, 132000, 132001, 132005, 132007, 132012, 132015, 132016}
PAIR_RETRY_S = 6.0  # Meta's per-pair pace: about one message every 6 seconds to one user
MAX_PARAM = 1000  # a template parameter's length Meta accepts (1024), less a margin


def N_(msgid: str) -> str:
    """Marks a msgid for extraction (Babel's N_); translated when sent, in the recipient's language."""
    return msgid


# What the bot answers inbound messages with (the msgids live in the catalogs, in kk and ru).
REPLY_TEXTS = {
    # i18n: said in the language the patient just chose, so each translation names its own language
    Reply.LANGUAGE_SET: N_("Done: from now on I will write to you in this language."),
    Reply.ATTENDED: N_("✅ Thank you, your answer is recorded: you were there."),
    Reply.ALREADY: N_("Your answer is already recorded; nothing changed."),
    Reply.NOT_ANSWERABLE: N_("This answer can't be recorded for this visit."),
    Reply.BAD_BUTTON: N_("This visit is not among your visits; nothing was changed."),
    Reply.HELP: N_("Here your clinic's codes and questions about your visits reach you. Answer with the buttons "
                   "under each question."),
}
LINKED_TEXT = N_("Your WhatsApp is connected: codes and questions about your visits will come here. "
                 "Which language should I write in?")
UNKNOWN_TEXT = N_("This number is not registered at a clinic that uses Rastau. Ask your clinic to add your phone "
                  "number, then write here again.")
LANGUAGE_BUTTONS = {"kk": "Қазақша", "ru": "Русский"}
# i18n: a WhatsApp reply button: at most 18 characters (WhatsApp's limit is 20, and "❌ " goes before it)
SURE_TEXT = N_("Yes, I wasn't there")
ASK_REASON_TEXT = N_("If you want, write in one message what happened, for example: «I was at work that day».")


def plain(html_text: str) -> str:
    """Telegram's HTML as WhatsApp text: <b> becomes *bold*, other tags go, entities are unescaped."""
    text = re.sub(r"</?b>", "*", html_text)
    return html.unescape(re.sub(r"<[^>]+>", "", text))


class WhatsAppChannel:
    name = ChannelName.WHATSAPP

    def __init__(self, ctx: Context, i18n: I18n, api: WhatsAppApi | None = None, *, pacer: Pacer | None = None):
        settings = ctx.settings
        self._ctx, self._i18n = ctx, i18n
        self.api = api or WhatsAppApi(settings)
        self._pacer = pacer or SendPacer(settings.whatsapp_rate, settings.whatsapp_rate_per_recipient)
        self._languages = {"kk": settings.whatsapp_language_kk, "ru": settings.whatsapp_language_ru}

    # --- the Channel interface ----------------------------------------------------------------------------------

    async def send_code(self, to: Address, message: CodeMessage, *, not_after: float = math.inf) -> Sent:
        code = message.code
        template = self._template(self._ctx.settings.whatsapp_code_template, message.locale, [
            {"type": "body", "parameters": [{"type": "text", "text": code}]},
            {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": code}]}])
        return await self._send(to, "template", template, not_after)

    async def ask_attendance(self, to: Address, question: AttendanceQuestion, *, not_after: float = math.inf) -> Sent:
        params = [question.clinic, question.doctor, when(question.start, question.locale)]
        buttons = [{"type": "button", "sub_type": "quick_reply", "index": str(index), "parameters": [
            {"type": "payload", "payload": button_payload(self._ctx, question.visit_id, attended, to.value)}]}
            for index, attended in enumerate((True, False))]
        template = self._template(self._ctx.settings.whatsapp_question_template, question.locale, [
            {"type": "body", "parameters": [{"type": "text", "text": _param(p)} for p in params]}, *buttons])
        return await self._send(to, "template", template, not_after)

    async def send_notice(self, to: Address, notice: Notice, *, not_after: float = math.inf) -> Sent:
        """Free text inside the patient's 24-hour window; outside it (or when WhatsApp says so) the notice
        template, carrying the same text."""
        if to.patient_id is not None and await window_open(self._ctx, to.patient_id):
            try:
                return await self._send(to, "text", {"body": notice.text[:4096], "preview_url": False}, not_after)
            except ChannelRetry as exc:
                if exc.reason != f"whatsapp {REENGAGE}":
                    raise
        template = self._template(self._ctx.settings.whatsapp_notice_template, notice.locale, [
            {"type": "body", "parameters": [{"type": "text", "text": _param(notice.text)}]}])
        return await self._send(to, "template", template, not_after)

    def parse_answer(self, inbound: InboundMessage) -> Answer | None:
        if inbound.channel is not ChannelName.WHATSAPP or not inbound.button_payload:
            return None
        read = read_button(self._ctx, inbound.button_payload, inbound.sender)
        if read is None:
            return None
        visit_id, letter = read
        if letter not in ("y", "x"):  # "n" only asks once more; "k" went back: neither is an answer
            return None
        return Answer(AnswerKind.ATTENDED if letter == "y" else AnswerKind.NOT_ATTENDED,
                      Address(ChannelName.WHATSAPP, inbound.sender), inbound.external_id, visit_id,
                      inbound.received_at)

    # --- replies to inbound messages (inside the window the patient's message just opened) -----------------------

    async def reply(self, outcome: Outcome) -> None:
        to = Address(ChannelName.WHATSAPP, outcome.wa_id)
        if outcome.reply is Reply.UNKNOWN_NUMBER:
            text = "\n\n".join(self._i18n.gettext(UNKNOWN_TEXT, locale=code) for code in ("kk", "ru"))
            await self._send(to, "text", {"body": text}, math.inf)
        elif outcome.reply is Reply.CHOOSE_LANGUAGE:
            text = "\n\n".join(self._i18n.gettext(LINKED_TEXT, locale=code) for code in ("kk", "ru"))
            buttons = [{"type": "reply", "reply": {"id": f"{LANGUAGE_PREFIX}{code}", "title": title}}
                       for code, title in LANGUAGE_BUTTONS.items()]
            await self._send(to, "interactive", {"type": "button", "body": {"text": text},
                                                 "action": {"buttons": buttons}}, math.inf)
        elif outcome.reply is not None:
            locale = outcome.language.value if outcome.language else "ru"
            with self._i18n.context(), self._i18n.use_locale(locale):
                content = self._worded(outcome)
            await self._send(to, content[0], content[1], math.inf)

    def _worded(self, outcome: Outcome) -> tuple[str, dict[str, Any]]:
        """A reply in the current locale: ("text" | "interactive", its content)."""
        if outcome.reply is Reply.CONFIRM_DISPUTE and outcome.visit is not None:
            visit_id = outcome.visit.visit_id
            buttons = [{"type": "reply", "reply": {"id": button_payload(self._ctx, visit_id, letter, outcome.wa_id),
                                                   "title": title[:20]}}
                       for letter, title in (("x", "❌ " + _(SURE_TEXT)), ("k", _("↩ No, go back")))]
            return "interactive", {"type": "button", "body": {"text": plain(dispute_texts.confirm_dispute(
                outcome.visit))[:1024]}, "action": {"buttons": buttons}}
        if outcome.reply is Reply.DISPUTED:
            audience = outcome.audience or Audience.RECORDED_ONLY
            text = (_("❌ Recorded: you were not at this visit.") + " " + dispute_texts.told(audience) + "\n\n"
                    + _(ASK_REASON_TEXT))
        elif outcome.reply is Reply.REASON_ADDED:
            text = dispute_texts.reason_passed(outcome.audience or Audience.RECORDED_ONLY)
        elif outcome.reply is Reply.REASON_LATE:
            text = dispute_texts.reason_too_late()
        elif outcome.reply is Reply.KEPT:
            text = dispute_texts.nothing_recorded()
        else:
            assert outcome.reply is not None
            text = _(REPLY_TEXTS[outcome.reply])
        return "text", {"body": plain(text)}

    # --- sending -------------------------------------------------------------------------------------------------

    def _template(self, name: str, locale: str, components: list[dict[str, Any]]) -> dict[str, Any]:
        language = self._languages.get(locale, self._languages["ru"])
        return {"name": name, "language": {"code": language}, "components": components}

    async def _send(self, to: Address, kind: str, content: dict[str, Any], not_after: float) -> Sent:
        recipient = int(to.value) if to.value.isdigit() else 0
        if not recipient:
            raise ChannelGone("whatsapp: the address is not a wa_id")
        async with self._pacer.turn(recipient, not_after):
            try:
                wamid = await self.api.send(to.value, kind, content)
            except WhatsAppApiError as exc:
                raise await self._translated(exc) from exc
        return Sent(wamid)

    async def _translated(self, exc: WhatsAppApiError) -> Exception:
        reason = f"whatsapp {exc.code}"
        if exc.code == RATE_LIMIT:
            await self._pacer.pause(1.0)
            return ChannelRetry(reason, retry_after=1.0)
        if exc.code == PAIR_LIMIT:
            return ChannelRetry(reason, retry_after=PAIR_RETRY_S)
        if exc.code == REENGAGE:
            return ChannelRetry(reason)  # send_notice takes it as "use the template"
        if exc.code in GONE:
            return ChannelGone(reason)
        if exc.code in REFUSED or (exc.code and exc.status == 400 and exc.code // 1000 == 132):
            log.error("whatsapp refused a message", meta_error=exc.code)  # its title may quote what we sent
            return ChannelRefused(reason)
        if exc.code == 190:
            log.error("whatsapp refused the access token: check RASTAU_WHATSAPP_ACCESS_TOKEN")
        return ChannelRetry(reason)


def _param(text: str) -> str:
    """A template parameter: no new lines, tabs or runs of spaces (Meta refuses them), not too long."""
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_PARAM else flat[:MAX_PARAM - 1] + "…"


# --- the webhook ------------------------------------------------------------------------------------------------

def signature_ok(app_secret: str, body: bytes, header: str | None) -> bool:
    """``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body under the app secret>``, compared in constant
    time."""
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(header[len("sha256="):].strip().lower().encode(), expected.encode())


def add_whatsapp_webhook(app: web.Application, ctx: Context, *, wake: asyncio.Event | None = None) -> None:
    """Serve the webhook at ``whatsapp_webhook_path`` on the bot's aiohttp app."""
    settings = ctx.settings
    if settings.whatsapp_app_secret is None or settings.whatsapp_verify_token is None:
        raise ValueError("the WhatsApp webhook needs RASTAU_WHATSAPP_APP_SECRET and RASTAU_WHATSAPP_VERIFY_TOKEN")
    secret = settings.whatsapp_app_secret.get_secret_value()
    verify = settings.whatsapp_verify_token.get_secret_value()

    async def handshake(request: web.Request) -> web.StreamResponse:
        token = request.query.get("hub.verify_token", "")
        if request.query.get("hub.mode") != "subscribe" or not hmac.compare_digest(token.encode(), verify.encode()):
            return web.Response(status=403, text="verify token does not match")
        return web.Response(text=request.query.get("hub.challenge", ""))

    async def receive(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if not signature_ok(secret, body, request.headers.get("X-Hub-Signature-256")):
            log.warning("whatsapp webhook refused: bad or missing signature")
            return web.Response(status=401, text="bad signature")
        try:
            parsed = json.loads(body)
        except ValueError:
            return web.Response(status=400, text="body is not JSON")
        events = events_of(parsed, settings.whatsapp_phone_number_id) if isinstance(parsed, dict) else []
        if events:
            try:
                await queue_events(ctx, events)
            except DatabaseUnavailable:
                return web.Response(status=503, text="try again")  # Meta redelivers; nothing was half-stored
            if wake is not None:
                wake.set()
        return web.Response(text="ok")

    app.router.add_get(settings.whatsapp_webhook_path, handshake)
    app.router.add_post(settings.whatsapp_webhook_path, receive)


def create_whatsapp_app(ctx: Context, *, wake: asyncio.Event | None = None) -> web.Application:
    """The webhook alone (long-polling mode has no Telegram webhook app to put it on)."""
    app = web.Application(client_max_size=3 * 1024 * 1024)
    add_whatsapp_webhook(app, ctx, wake=wake)
    return app


class WhatsAppInbox:
    """Handles what the webhook queued: links, languages, answers, statuses; then replies."""

    def __init__(self, ctx: Context, channel: WhatsAppChannel):
        self._ctx, self._channel = ctx, channel
        self.wake = asyncio.Event()

    async def run_once(self, limit: int = 100) -> int:
        events = await pending_events(self._ctx, limit)
        handled = 0
        for external_id, event in events:
            mine, outcome = await handle_event(self._ctx, external_id, event)
            handled += mine
            if outcome is not None and outcome.reply is not None:
                try:
                    await self._channel.reply(outcome)
                except (ChannelGone, ChannelRetry, ChannelRefused) as exc:
                    log.warning("whatsapp reply not sent", reason=exc.reason)
        return handled

    async def drain(self, max_rounds: int = 100) -> int:
        total = 0
        for _round in range(max_rounds):
            handled = await self.run_once()
            total += handled
            if not handled:
                break
        return total

    async def run_forever(self, stop: asyncio.Event, idle: float = 5.0) -> None:
        while not stop.is_set():
            try:
                handled = await self.run_once()
            except Exception:  # the loop must survive a database hiccup (logged with its traceback)
                log.exception("whatsapp inbox round failed; retrying")
                handled = 0
            if not handled:
                self.wake.clear()
                with suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), idle)


class WhatsAppRuntime:
    """Everything WhatsApp needs in the bot's process: the channel (for the outbox dispatcher), its webhook (on the
    Telegram webhook app, or served alone in long-polling mode), and the inbox worker."""

    def __init__(self, ctx: Context, i18n: I18n):
        settings = ctx.settings
        self._shared: SharedSendPacer | None = None
        if settings.redis_url:  # several bot instances keep Meta's limits together, as they do Telegram's
            self._shared = SharedSendPacer.from_url(settings.redis_url, settings.whatsapp_rate,
                                                    settings.whatsapp_rate_per_recipient,
                                                    namespace="rastau:pace:whatsapp")
        self.channel = WhatsAppChannel(ctx, i18n, pacer=self._shared)
        self.inbox = WhatsAppInbox(ctx, self.channel)
        self._ctx = ctx
        self._runner: web.AppRunner | None = None
        self._worker: asyncio.Task[None] | None = None

    def mount(self, app: web.Application) -> None:
        """The webhook on an app that is not started yet (the Telegram webhook app)."""
        add_whatsapp_webhook(app, self._ctx, wake=self.inbox.wake)

    async def serve(self, host: str, port: int) -> int:
        """The webhook alone on ``host:port`` (long-polling mode); the port it listens on (``port`` 0: any free one)."""
        self._runner = web.AppRunner(create_whatsapp_app(self._ctx, wake=self.inbox.wake), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound = int(self._runner.addresses[0][1])
        log.info("whatsapp webhook listening", host=host, port=bound, path=self._ctx.settings.whatsapp_webhook_path)
        return bound

    def start_worker(self, stop: asyncio.Event) -> None:
        self._worker = asyncio.create_task(self.inbox.run_forever(stop))

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with suppress(asyncio.CancelledError):
                await self._worker
        if self._runner is not None:
            await self._runner.cleanup()
        await self.channel.api.close()
        if self._shared is not None:
            await self._shared.close()


__all__ = ["WhatsAppChannel", "WhatsAppInbox", "WhatsAppRuntime", "add_whatsapp_webhook", "create_whatsapp_app",
           "signature_ok"]
