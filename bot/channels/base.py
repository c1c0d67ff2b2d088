"""The channel interface (issue 14): what the outbox dispatcher needs of Telegram, WhatsApp and SMS.

The outbox stays the single source of what is sent. The renderer turns a patient's row into a channel-neutral
message (a :class:`CodeMessage`, an :class:`AttendanceQuestion` or a :class:`Notice`: facts and a locale, no text);
the dispatcher picks the patient's channels (preferred first, then :data:`FALLBACK_ORDER`) and hands the message to
one :class:`Channel`, which words it for itself (Telegram HTML with buttons, a WhatsApp template, a short SMS) at
dispatch time.

How a send ends, as the dispatcher reads it:
- it returns a :class:`Sent` (the channel's own message id, kept on the outbox row);
- :class:`ChannelGone` — this channel can never reach this patient at this address (blocked the bot, no WhatsApp
  account, invalid or unreachable number): recorded on the patient's channel row and the outbox row, and the same
  message goes on the next channel at once;
- :class:`ChannelRetry` — try again later (5xx, timeouts, rate limits; ``retry_after`` seconds when the provider
  said so): the row is rescheduled with backoff; the channel is tried again, not skipped;
- :class:`ChannelRefused` — this message is wrong for the provider (a 400 that is not about the recipient): the row
  fails, as Telegram's bad requests do today;
- :class:`bot.delivery.limits.TooLate` from the channel's pacer — handed back, as today.
A channel never catches these to retry or fall back by itself; nothing in a channel writes to the database but the
SMS budget (core.services.channels.spend_sms).
"""
from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Protocol

from core.channels import FALLBACK_ORDER, ChannelName

__all__ = ["FALLBACK_ORDER", "ChannelName"]  # re-exported: core decides which channels work, the bot sends


@dataclass(frozen=True)
class Address:
    """Where a patient is on one channel: a Telegram chat id, a WhatsApp wa_id (digits, no "+"), or an E.164 phone
    ("+77011234567") for SMS. Never logged: it identifies the patient."""
    channel: ChannelName
    value: str
    patient_id: int | None = None
    clinic_id: int | None = None  # whose budget an SMS counts against


# --- what is said (channel-neutral; each channel words it itself, in ``locale``) ------------------------------------

@dataclass(frozen=True)
class CodeMessage:
    """The one-time code for a visit. The code is issued at render time: it exists in plain only on its way out."""
    visit_id: int
    code: str
    clinic: str
    doctor: str
    start: dt.datetime  # UTC; channels show Asia/Almaty
    expires: dt.datetime  # UTC
    online: bool
    locale: str  # "kk" | "ru"


@dataclass(frozen=True)
class AttendanceQuestion:
    """"Were you at this visit?" — answered by the channel's buttons, or "1"/"0" by SMS reply."""
    visit_id: int
    clinic: str
    doctor: str
    start: dt.datetime  # UTC
    online: bool
    locale: str


@dataclass(frozen=True)
class Notice:
    """Free-form text to a patient. ``text`` is plain; ``html`` the same with Telegram's HTML when it differs;
    ``short`` a wording that fits one SMS segment where it can (the SMS channel sends it instead of ``text``)."""
    text: str
    locale: str
    html: str | None = None
    short: str | None = None


PatientContent = CodeMessage | AttendanceQuestion | Notice


@dataclass(frozen=True)
class PatientMessage:
    """What the renderer returns for a row the dispatcher must route to a patient's channel: ``routes`` are the
    patient's working channels, preferred first (empty: no channel at all, nothing issued, the row says no_channel).
    ``content`` is None only when ``routes`` is empty."""
    patient_id: int
    content: PatientContent | None
    routes: tuple[Address, ...] = ()


@dataclass(frozen=True)
class Sent:
    """A send the provider accepted. ``message_id``: the provider's id (Telegram message id, WhatsApp wamid, the
    SMS gateway's id), stored on the outbox row so delivery reports can find it. ``segments``: SMS parts billed."""
    message_id: str | None
    segments: int = 1


# --- what comes back --------------------------------------------------------------------------------------------------

class AnswerKind(str, enum.Enum):
    ATTENDED = "attended"  # "I was there"
    NOT_ATTENDED = "not_attended"  # "I wasn't there"


@dataclass(frozen=True)
class Answer:
    """A patient's answer parsed from an inbound message. ``visit_id`` is None when the channel cannot carry it (an SMS
    "1"): the caller then takes the newest visit asked on that channel at that address and still unanswered.
    ``external_id`` (the provider's message id) is what makes a replayed inbound message change nothing."""
    kind: AnswerKind
    address: Address
    external_id: str
    visit_id: int | None = None
    received_at: dt.datetime | None = None


class DeliveryState(str, enum.Enum):
    """Delivery reports (outbox.delivery_status): WhatsApp and SMS say when a message arrived; Telegram does not."""
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"


# --- how a send ends badly ------------------------------------------------------------------------------------------

class ChannelError(Exception):
    """Base of what a channel raises. ``reason``: short, no phone, code, token or name in it (it is stored and
    logged)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason[:200]


class ChannelGone(ChannelError):
    """For good, for this patient at this address: fall back to the next channel."""


class ChannelRetry(ChannelError):
    """For now: retry this channel later (``retry_after`` seconds when the provider said)."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class ChannelRefused(ChannelError):
    """This message is wrong for the provider: give it up (the row fails), do not fall back."""


# --- the interface ----------------------------------------------------------------------------------------------------

class Channel(Protocol):
    """One way to reach patients. Implementations: bot/channels/telegram.py, sms.py, whatsapp.py."""

    name: ChannelName

    async def send_code(self, to: Address, message: CodeMessage, *, not_after: float) -> Sent:
        """Send the one-time code. ``not_after`` (time.monotonic): the pacer raises TooLate rather than start later."""

    async def ask_attendance(self, to: Address, question: AttendanceQuestion, *, not_after: float) -> Sent:
        """Ask "were you there?" so that the answer can come back through :meth:`parse_answer` (or the bot's
        handlers, for Telegram's buttons)."""

    async def send_notice(self, to: Address, notice: Notice, *, not_after: float) -> Sent:
        """Free-form text (WhatsApp: only inside the 24-hour window, else ChannelRetry/ChannelGone as it decides)."""

    def parse_answer(self, inbound: InboundMessage) -> Answer | None:
        """An answer in an authenticated inbound message (the webhook checked its signature first), or None when the
        message is not one. Never raises on odd text."""


@dataclass(frozen=True)
class InboundMessage:
    """An inbound message after its webhook's signature check: who sent it, the provider's id, the text or button
    payload."""
    channel: ChannelName
    sender: str  # wa_id / E.164 phone / chat id as text
    external_id: str
    text: str = ""
    button_payload: str | None = None
    received_at: dt.datetime | None = None
    extra: dict[str, str] = field(default_factory=dict)


# Channel names as the database stores them (patient_channels.channel, patients.preferred_channel, outbox.channel).
CHANNEL_VALUES = tuple(c.value for c in ChannelName)
