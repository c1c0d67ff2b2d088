"""The channels a patient can be reached on (issue 14), as the core and the database name them. The bot's channel
interface (bot/channels/base.py) re-exports these; core decides which of a patient's channels work, the bot sends."""
from __future__ import annotations

import enum


class ChannelName(str, enum.Enum):
    TELEGRAM = "telegram"
    WHATSAPP = "whatsapp"
    SMS = "sms"


# The one place the fallback order is written: a patient's preferred channel first, then these, skipping channels the
# patient has not proven or that are gone. SMS last: it costs money and carries the least.
FALLBACK_ORDER: tuple[ChannelName, ...] = (ChannelName.TELEGRAM, ChannelName.WHATSAPP, ChannelName.SMS)
