"""The SMS texts, in the recipient's language (the caller sets the locale). Short on purpose: each fits one SMS
segment in kk and ru (Cyrillic is UCS-2: 70 characters), which tests/bot/test_sms.py checks for every template with
the longest values it can hold. The sender name (RASTAU_SMS_SENDER, "Rastau") already says who writes; the clinic and
doctor are left out for length (the date and time say which visit)."""
from __future__ import annotations

import datetime as dt

from aiogram.utils.i18n import get_i18n

from bot.i18n import _, kk_time
from core.clock import to_local


def _day(start: dt.datetime) -> str:
    return to_local(start).strftime("%d.%m")


def _clock(start: dt.datetime) -> str:
    return to_local(start).strftime("%H:%M")


def _at(start: dt.datetime) -> str:
    """The time as a sentence says "at" it: kk "09:05-те" (the locative, as read aloud), ru "09:05"."""
    return kk_time(start, "locative") if get_i18n().current_locale == "kk" else _clock(start)


def code_sms(code: str, start: dt.datetime) -> str:
    # i18n: an SMS: one segment is 70 characters with the values ({day} 29.11, {time} 09:05, {code} 6 digits)
    return _("Code {code} for your visit on {day} at {time}. Tell it only to the doctor.").format(
        code=code, day=_day(start), time=_clock(start))


def question_sms(start: dt.datetime) -> str:
    """"Were you there?" where replies reach us: the patient answers 1 or 0."""
    # i18n: an SMS of 70 characters at most with the values; {time} is "09:05" (kk: "09:05-те"); the patient replies
    # with the digit 1 or 0
    return _("Were you at the doctor's on {day} at {time}? Reply 1 - yes, 0 - no").format(
        day=_day(start), time=_at(start))


def question_sms_no_reply(start: dt.datetime, contact: str) -> str:
    """Where replies cannot reach us: that the visit is billed in their name and how to dispute it."""
    # i18n: an SMS; {time} is "09:05" (kk: "09:05-те"); {contact}: a short link or a phone number
    return _("A visit on {day} at {time} is billed in your name. If you were not there: {contact}").format(
        day=_day(start), time=_at(start), contact=contact)
