"""The contract between the outbox dispatcher (how and when to send) and the renderer (what to say)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.channels.base import PatientMessage
from core.model import Recipient


@dataclass(frozen=True)
class OutboxItem:
    id: int
    kind: str  # as stored: a core.model.OutboxKind value, or one this version does not know (the renderer skips it)
    recipient_kind: Recipient
    recipient_id: int
    visit_id: int | None
    payload: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0  # times claimed, crashed claims included
    failures: int = 0  # sends that failed so far: what the retry budget counts


@dataclass(frozen=True)
class Outgoing:
    chat_id: int
    text: str
    reply_markup: Any = None
    document: tuple[str, bytes] | None = None  # (filename, bytes), sent after the text
    parse_mode: str | None = "HTML"
    # set: edit that earlier message of the chat instead of sending (best effort: a message Telegram no longer
    # lets the bot edit is left as it is, and the row's other parts still go out)
    edit_message_id: int | None = None


class Renderer(Protocol):
    async def render(self, message: OutboxItem) -> list[Outgoing] | PatientMessage | None:
        """What to send for this outbox row, in the recipient's language; None to skip it for good. A
        PatientMessage (issue 14): a patient's code or question for a channel other than Telegram."""
