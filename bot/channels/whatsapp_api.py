"""A thin client of the WhatsApp Business Cloud API over aiohttp: one call,
``POST /{version}/{phone_number_id}/messages``.

Why not ``pywa``: it talks HTTP through httpx (a second HTTP stack beside aiogram's aiohttp), its webhook server plugs
into FastAPI/Flask/Starlette rather than our aiohttp app, and its handler model (decorated callbacks on a client
object) would sit beside aiogram's routers. Rastau needs one endpoint and the error codes; the webhook's signature
check is a few lines of ``hmac`` (see bot/channels/whatsapp_webhook.py).
"""
from __future__ import annotations

from contextlib import suppress
from typing import Any

import aiohttp

from core.config import Settings


class WhatsAppApiError(Exception):
    """The API refused a request (``code``: Meta's error code), or it could not be asked (``code`` 0: a timeout, a
    dropped connection, an answer that is not Meta's). ``status``: the HTTP status, 0 without an answer."""

    def __init__(self, code: int, status: int, title: str):
        super().__init__(f"whatsapp {code} (HTTP {status}): {title}")
        self.code, self.status, self.title = code, status, title[:120]


class WhatsAppApi:
    def __init__(self, settings: Settings, *, timeout: float = 15.0):
        if not settings.whatsapp_enabled or settings.whatsapp_access_token is None:
            raise ValueError("WhatsApp is not configured (RASTAU_WHATSAPP_PHONE_NUMBER_ID and its secrets)")
        self._url = (f"{settings.whatsapp_api_base.rstrip('/')}/{settings.whatsapp_api_version}/"
                     f"{settings.whatsapp_phone_number_id}/messages")
        self._token = settings.whatsapp_access_token
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, to: str, kind: str, content: dict[str, Any]) -> str:
        """Send one message (``kind``: text | template | interactive) to a wa_id; its wamid."""
        body = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, "type": kind, kind: content}
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        headers = {"Authorization": f"Bearer {self._token.get_secret_value()}"}
        try:
            async with self._session.post(self._url, json=body, headers=headers) as response:
                status = response.status
                answer: object = None
                with suppress(ValueError):
                    answer = await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise WhatsAppApiError(0, 0, type(exc).__name__) from exc
        if not isinstance(answer, dict):
            raise WhatsAppApiError(0, status, "answer is not JSON")
        if status == 200:
            try:
                return str(answer["messages"][0]["id"])
            except (KeyError, IndexError, TypeError) as exc:
                raise WhatsAppApiError(0, status, "answer has no message id") from exc
        error = answer.get("error")
        if not isinstance(error, dict):
            error = {}
        code = error.get("code")
        raise WhatsAppApiError(code if isinstance(code, int) else 0, status, str(error.get("message") or ""))
