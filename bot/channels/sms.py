"""SMS behind the channel interface (issue 14): codes and "were you there?" for patients with no messenger, through an
SMS gateway over HTTP.

What is the same for every gateway lives in :class:`SmsChannel` (wording, segment counting, the clinic's daily
budget, pacing); what a gateway's API looks like is a small :class:`SmsProvider` (its request, how its answers and
errors map onto the channel's outcomes, its inbound messages and delivery reports). A second provider is one more
class in :data:`PROVIDERS`.

An invalid or unreachable number is :class:`ChannelGone` (the phone stops counting as a channel until it changes);
the gateway's 5xx, timeouts and rate limits are :class:`ChannelRetry`; over the clinic's daily cap the message is
:class:`ChannelRefused` (recorded as failed with the reason, never silently dropped). Phones and texts are never
logged.
"""
from __future__ import annotations

import base64
import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiogram.utils.i18n import I18n

from bot.channels import sms_texts
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
    DeliveryState,
    InboundMessage,
    Notice,
    Sent,
)
from bot.delivery.limits import Pacer, SendPacer
from core.config import Settings
from core.logs import get_logger
from core.services import Context
from core.services.channels import refund_sms, spend_sms

log = get_logger("rastau.sms")

# GSM 03.38: the basic set (one septet each) and the extension table (two: escape + char)
_GSM_BASIC = set("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
                 "¿abcdefghijklmnopqrstuvwxyzäöñüà")
_GSM_EXTENDED = set("^{}\\[~]|€\f")


@dataclass(frozen=True)
class Segments:
    encoding: str  # "gsm7" | "ucs2"
    count: int
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)


def count_segments(text: str) -> Segments:
    """How many SMS segments ``text`` takes: GSM-7 fits 160 septets in one (153 per part when concatenated), UCS-2
    (anything outside GSM-7, e.g. Cyrillic) 70 UTF-16 units (67 per part)."""
    if all(c in _GSM_BASIC or c in _GSM_EXTENDED for c in text):
        units = sum(2 if c in _GSM_EXTENDED else 1 for c in text)
        return Segments("gsm7", 1 if units <= 160 else math.ceil(units / 153), units)
    units = len(text.encode("utf-16-le")) // 2
    return Segments("ucs2", 1 if units <= 70 else math.ceil(units / 67), units)


def parse_reply(text: str) -> AnswerKind | None:
    """A patient's reply: "1" I was there, "0" I wasn't; anything else is not an answer."""
    reply = text.strip().rstrip(".!")
    return {"1": AnswerKind.ATTENDED, "0": AnswerKind.NOT_ATTENDED}.get(reply)


# --- providers ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GatewayRequest:
    method: str
    url: str
    json: dict[str, Any]
    headers: dict[str, str]  # credentials included: never logged


class SmsProvider(Protocol):
    """One gateway's API."""

    def send_request(self, *, to: str, text: str, reference: str) -> GatewayRequest: ...

    def sent_id(self, status: int, body: Any, headers: dict[str, str]) -> str:
        """The gateway's message id for an accepted send; raises ChannelGone/Retry/Refused otherwise."""

    def inbound(self, body: Any) -> InboundMessage | None:
        """An inbound SMS in a (signature-checked) webhook body, or None when the body is not one."""

    def report(self, body: Any) -> tuple[str, DeliveryState] | None:
        """A delivery report: (gateway message id, state), or None."""


_REPORT_STATES = {"sent": DeliveryState.SENT, "delivered": DeliveryState.DELIVERED, "failed": DeliveryState.FAILED,
                  "undelivered": DeliveryState.FAILED}


class GenericJsonProvider:
    """A JSON gateway (devkit/sms_gateway.py speaks it): ``POST {url}/messages`` with Basic auth and
    ``{"from", "to", "text", "reference"}``, answered ``{"id"}``; errors ``{"error": code}``: ``invalid_number`` and
    ``unreachable`` (400/404) are for good, 429 (with Retry-After) and 5xx for now, any other 4xx refuses the message.
    Inbound: ``{"id", "from", "text"}``; reports: ``{"id", "status"}``."""

    def __init__(self, settings: Settings):
        if settings.sms_gateway_url is None or settings.sms_login is None or settings.sms_password is None:
            raise ValueError("SMS is not configured (RASTAU_SMS_GATEWAY_URL, RASTAU_SMS_LOGIN, RASTAU_SMS_PASSWORD)")
        self._url = settings.sms_gateway_url.rstrip("/")
        credentials = f"{settings.sms_login}:{settings.sms_password.get_secret_value()}".encode()
        self._headers = {"Authorization": "Basic " + base64.b64encode(credentials).decode()}
        self._sender = settings.sms_sender

    def send_request(self, *, to: str, text: str, reference: str) -> GatewayRequest:
        return GatewayRequest("POST", f"{self._url}/messages",
                              {"from": self._sender, "to": to, "text": text, "reference": reference},
                              dict(self._headers))

    def sent_id(self, status: int, body: Any, headers: dict[str, str]) -> str:
        error = str(body.get("error", "")) if isinstance(body, dict) else ""
        if status in (200, 201, 202) and isinstance(body, dict) and body.get("id"):
            return str(body["id"])
        if error in ("invalid_number", "unreachable", "blacklisted"):
            raise ChannelGone(f"sms gateway: {error}")
        if status == 429:
            retry = headers.get("Retry-After", "")
            raise ChannelRetry("sms gateway: rate limited", float(retry) if retry.isdigit() else None)
        if status >= 500 or status in (200, 201, 202):
            raise ChannelRetry(f"sms gateway: HTTP {status}")
        if status in (401, 403):
            log.error("the SMS gateway refused our credentials: check RASTAU_SMS_LOGIN and RASTAU_SMS_PASSWORD")
            raise ChannelRetry(f"sms gateway: HTTP {status} (credentials)")
        raise ChannelRefused(f"sms gateway: HTTP {status} {error}".strip())

    def inbound(self, body: Any) -> InboundMessage | None:
        if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in ("id", "from", "text")):
            return None
        return InboundMessage(channel=ChannelName.SMS, sender=body["from"], external_id=body["id"],
                              text=body["text"])

    def report(self, body: Any) -> tuple[str, DeliveryState] | None:
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            return None
        state = _REPORT_STATES.get(str(body.get("status")))
        return None if state is None else (body["id"], state)


PROVIDERS: dict[str, type[GenericJsonProvider]] = {"generic": GenericJsonProvider}


def make_provider(settings: Settings) -> SmsProvider:
    try:
        return PROVIDERS[settings.sms_provider](settings)
    except KeyError:
        raise ValueError(f"unknown RASTAU_SMS_PROVIDER {settings.sms_provider!r}; known: {sorted(PROVIDERS)}") from None


# --- the channel ----------------------------------------------------------------------------------------------------

class SmsChannel:
    name = ChannelName.SMS

    def __init__(self, ctx: Context, i18n: I18n, *, provider: SmsProvider | None = None,
                 session: aiohttp.ClientSession | None = None, pacer: Pacer | None = None):
        settings = ctx.settings
        self._ctx, self._i18n = ctx, i18n
        self._provider = provider or make_provider(settings)
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=settings.sms_timeout_seconds)
        self._pacer = pacer or SendPacer(settings.sms_rate, 1.0)
        self._inbound = settings.sms_inbound_enabled
        self._contact = settings.sms_dispute_contact.strip()
        self.segments_sent = 0

    @property
    def timeout(self) -> float:
        return float(self._timeout.total or 0)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @contextlib.contextmanager
    def _words(self, locale: str) -> Iterator[None]:
        with self._i18n.context(), self._i18n.use_locale(locale):
            yield

    async def send_code(self, to: Address, message: CodeMessage, *, not_after: float) -> Sent:
        with self._words(message.locale):
            text = sms_texts.code_sms(message.code, message.start)
        return await self.send_text(to, text, not_after=not_after)

    async def ask_attendance(self, to: Address, question: AttendanceQuestion, *, not_after: float) -> Sent:
        with self._words(question.locale):
            text = (sms_texts.question_sms(question.start) if self._inbound
                    else sms_texts.question_sms_no_reply(question.start, self._contact))
        return await self.send_text(to, text, not_after=not_after)

    async def send_notice(self, to: Address, notice: Notice, *, not_after: float) -> Sent:
        return await self.send_text(to, notice.short or notice.text, not_after=not_after)

    def parse_answer(self, inbound: InboundMessage) -> Answer | None:
        kind = parse_reply(inbound.text)
        if kind is None:
            return None
        return Answer(kind=kind, address=Address(ChannelName.SMS, inbound.sender), external_id=inbound.external_id,
                      received_at=inbound.received_at)

    async def send_text(self, to: Address, text: str, *, not_after: float = math.inf) -> Sent:
        segments = count_segments(text).count
        spend = None
        if to.clinic_id is not None:
            spend = await spend_sms(self._ctx, to.clinic_id, segments)
            if not spend.allowed:
                raise ChannelRefused(f"the clinic's daily SMS cap ({spend.cap}) is reached")
        request = self._provider.send_request(to=to.value, text=text, reference=f"p{to.patient_id or 0}")
        try:
            async with self._pacer.turn(to.patient_id or 0, not_after=not_after):
                message_id = await self._post(request)
        except BaseException:  # not taken (error, timeout, its turn too late): the segments go back to the day
            if spend is not None and to.clinic_id is not None:
                await refund_sms(self._ctx, to.clinic_id, spend, segments)
            raise
        self.segments_sent += segments
        return Sent(message_id, segments=segments)

    async def _post(self, request: GatewayRequest) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.request(request.method, request.url, json=request.json, headers=request.headers,
                                             timeout=self._timeout) as response:
                try:
                    body: Any = await response.json(content_type=None)
                except ValueError:
                    body = None
                return self._provider.sent_id(response.status, body, dict(response.headers))
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ChannelRetry(f"sms gateway: {type(exc).__name__}") from exc
