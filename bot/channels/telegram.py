"""Telegram behind the channel interface: today's aiogram sending (one part at a time, paced, 429s absorbed in place)
and today's texts and buttons. The dispatcher sends a row's ready-made parts (digests, notices to admins and
auditors) through :meth:`TelegramChannel.send_outgoing`; a patient's code and question come as channel-neutral
messages and are worded here exactly as the renderer words them for a Telegram-only deployment."""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

from aiogram import Bot
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNotFound,
    TelegramRetryAfter,
)
from aiogram.types import BufferedInputFile
from aiogram.utils.i18n import I18n

from bot import texts
from bot.channels.base import (
    Address,
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
from bot.delivery.limits import Pacer
from bot.delivery.types import Outgoing
from bot.keyboards import answer_keyboard
from core.logs import get_logger

log = get_logger("rastau.dispatcher")

MAX_RETRY_AFTER_IN_PLACE = 5  # 429s absorbed in place before the row is rescheduled


def code_outgoing(chat_id: int, message: CodeMessage) -> Outgoing:
    """The code as Telegram shows it, in the current locale."""
    return Outgoing(chat_id=chat_id, text=texts.code_message(
        message.code, clinic=message.clinic, doctor=message.doctor, start=message.start, expires=message.expires,
        online=message.online))


def question_outgoing(chat_id: int, question: AttendanceQuestion) -> Outgoing:
    """"Were you there?" with its two buttons, in the current locale."""
    return Outgoing(chat_id=chat_id, text=texts.attendance_question(
        clinic=question.clinic, doctor=question.doctor, start=question.start, online=question.online),
        reply_markup=answer_keyboard(question.visit_id))


class TelegramChannel:
    name = ChannelName.TELEGRAM

    def __init__(self, bot: Bot, pacer: Pacer, i18n: I18n | None = None):
        self._bot, self._pacer, self._i18n = bot, pacer, i18n

    async def send_outgoing(self, part: Outgoing, not_after: float = math.inf) -> int:
        """One part (or an edit of an earlier message), paced; the message's id. Telegram's own errors escape as
        aiogram raises them (the dispatcher reads them for parts) but for 429s in a row, which end as ChannelRetry."""
        for _ in range(MAX_RETRY_AFTER_IN_PLACE):
            async with self._pacer.turn(part.chat_id, not_after=not_after):
                try:
                    if part.edit_message_id is not None:
                        return await self._edit(part)
                    if part.document is not None:
                        filename, data = part.document
                        sent = await self._bot.send_document(part.chat_id,
                                                             BufferedInputFile(data, filename=filename),
                                                             caption=part.text or None, parse_mode=part.parse_mode,
                                                             reply_markup=part.reply_markup)
                    else:
                        sent = await self._bot.send_message(part.chat_id, part.text, parse_mode=part.parse_mode,
                                                            reply_markup=part.reply_markup)
                    return sent.message_id
                except TelegramRetryAfter as exc:
                    log.warning("telegram asked to slow down", retry_after=exc.retry_after)
                    await self._pacer.pause(exc.retry_after)
        raise ChannelRetry("too many 429 answers in a row")

    async def _edit(self, part: Outgoing) -> int:
        """Replace an earlier message's text; one Telegram will not edit (deleted, too old) stays as it is."""
        assert part.edit_message_id is not None, "only edits come here"
        try:
            await self._bot.edit_message_text(part.text, chat_id=part.chat_id, message_id=part.edit_message_id,
                                              parse_mode=part.parse_mode, reply_markup=part.reply_markup)
        except TelegramBadRequest as exc:
            log.info("earlier message not edited", error=exc.message)
        return part.edit_message_id

    async def _send(self, part: Outgoing, not_after: float) -> Sent:
        try:
            return Sent(str(await self.send_outgoing(part, not_after)))
        except TelegramForbiddenError as exc:
            raise ChannelGone("blocked the bot") from exc
        except (TelegramBadRequest, TelegramNotFound) as exc:
            raise ChannelRefused(f"bad request: {exc.message}") from exc
        except (TimeoutError, TelegramAPIError) as exc:  # 5xx, network, timeouts
            raise ChannelRetry(f"{type(exc).__name__}: {exc}") from exc

    def _chat(self, to: Address) -> int:
        return int(to.value)

    @contextlib.contextmanager
    def _words(self, locale: str) -> Iterator[None]:
        if self._i18n is None:
            raise RuntimeError("TelegramChannel needs the I18n to word patients' messages")
        with self._i18n.context(), self._i18n.use_locale(locale):
            yield

    async def send_code(self, to: Address, message: CodeMessage, *, not_after: float) -> Sent:
        with self._words(message.locale):
            part = code_outgoing(self._chat(to), message)
        return await self._send(part, not_after)

    async def ask_attendance(self, to: Address, question: AttendanceQuestion, *, not_after: float) -> Sent:
        with self._words(question.locale):
            part = question_outgoing(self._chat(to), question)
        return await self._send(part, not_after)

    async def send_notice(self, to: Address, notice: Notice, *, not_after: float) -> Sent:
        text, mode = (notice.html, "HTML") if notice.html is not None else (notice.text, None)
        return await self._send(Outgoing(chat_id=self._chat(to), text=text, parse_mode=mode), not_after)

    def parse_answer(self, inbound: InboundMessage) -> None:
        """Telegram's answers are its buttons, handled by bot/handlers/patient.py."""
        return None
