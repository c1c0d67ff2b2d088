"""The SMS gateway's webhooks on the bot's aiohttp app (issue 14): inbound replies ("1" I was there, "0" I wasn't) and
delivery reports.

Every POST must carry ``X-Rastau-Timestamp`` (Unix seconds, within five minutes of our clock) and
``X-Rastau-Signature`` = hex HMAC-SHA256 under RASTAU_SMS_INBOUND_SECRET of ``"<timestamp>." + raw body``. Both are
checked (constant-time) before the body is even parsed: a missing, wrong or stale signature is 401 and changes
nothing. A replayed body with a fresh signature is still the same message id, which is recorded once
(inbound_messages), so a replay changes nothing either. Nothing about the sender or the text is logged."""
from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from aiohttp import web

from bot.channels.base import AnswerKind, ChannelName
from bot.channels.sms import SmsProvider, make_provider, parse_reply
from core.logs import get_logger
from core.services import Context
from core.services.channels import inbound_payload, record_sms_answer

log = get_logger("rastau.sms")

MAX_BODY = 8 * 1024
MAX_SKEW_SECONDS = 300
TIMESTAMP_HEADER, SIGNATURE_HEADER = "X-Rastau-Timestamp", "X-Rastau-Signature"
REPORT_SUFFIX = "/report"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature the gateway sends (devkit/sms_gateway.py signs the same way)."""
    return hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class SmsWebhook:
    def __init__(self, ctx: Context, *, provider: SmsProvider | None = None):
        secret = ctx.settings.sms_inbound_secret
        if secret is None:
            raise ValueError("SMS inbound needs RASTAU_SMS_INBOUND_SECRET")
        self._ctx, self._secret = ctx, secret.get_secret_value().encode()
        self._provider = provider or make_provider(ctx.settings)

    def register(self, app: web.Application, path: str) -> None:
        app.router.add_post(path, self.inbound)
        app.router.add_post(path.rstrip("/") + REPORT_SUFFIX, self.report)

    async def _verified_body(self, request: web.Request) -> Any:
        """The parsed body of a correctly signed, fresh request; raises 401/413/400 otherwise."""
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
        raw = await request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=len(raw))
        timestamp = request.headers.get(TIMESTAMP_HEADER, "")
        given = request.headers.get(SIGNATURE_HEADER, "")
        expected = sign(self._secret, timestamp, raw)
        if not hmac.compare_digest(given.encode(), expected.encode()):
            log.warning("SMS webhook with a missing or wrong signature refused")
            raise web.HTTPUnauthorized(text="bad signature")
        try:
            moment = int(timestamp)
        except ValueError:
            raise web.HTTPUnauthorized(text="bad timestamp") from None
        if abs(self._ctx.clock.now().timestamp() - moment) > MAX_SKEW_SECONDS:
            log.warning("SMS webhook with a stale timestamp refused")
            raise web.HTTPUnauthorized(text="stale timestamp")
        try:
            return json.loads(raw)
        except ValueError:
            raise web.HTTPBadRequest(text="the body is not JSON") from None

    async def inbound(self, request: web.Request) -> web.Response:
        body = await self._verified_body(request)
        message = self._provider.inbound(body)
        if message is None:
            raise web.HTTPBadRequest(text="not an inbound SMS: expected id, from and text")
        kind = parse_reply(message.text)
        outcome = await record_sms_answer(
            self._ctx, sender=message.sender, external_id=message.external_id,
            attended=None if kind is None else kind is AnswerKind.ATTENDED,
            payload=inbound_payload({"id": message.external_id, "text": message.text[:20]}))
        log.info("inbound SMS handled", outcome=outcome.outcome, visit_id=outcome.visit_id)
        return web.json_response({"ok": True, "outcome": outcome.outcome})

    async def report(self, request: web.Request) -> web.Response:
        body = await self._verified_body(request)
        found = self._provider.report(body)
        if found is None:
            raise web.HTTPBadRequest(text="not a delivery report: expected id and status")
        message_id, state = found
        async with self._ctx.uow() as uow:
            changed = await uow.channels.set_delivery(ChannelName.SMS.value, message_id, state.value,
                                                      self._ctx.clock.now())
            await uow.commit()
        return web.json_response({"ok": True, "matched": changed})


def add_sms_routes(app: web.Application, ctx: Context) -> bool:
    """Serve the SMS webhooks on ``app`` when inbound SMS is configured; False when it is not."""
    if not ctx.settings.sms_inbound_enabled:
        return False
    SmsWebhook(ctx).register(app, ctx.settings.sms_inbound_path)
    return True
