"""Buttons and their callback data. Callback data is only a claim: handlers re-check it against the
pressing user's own rows before anything changes."""
from __future__ import annotations

from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup, KeyboardButton, ReplyKeyboardMarkup

from bot.i18n import _

LANGUAGE_NAMES = {"kk": "Қазақша", "ru": "Русский"}  # each in its own language, never translated


class LangCb(CallbackData, prefix="lang"):
    code: str


class AnswerCb(CallbackData, prefix="ans"):
    """The patient's answer about one visit: ``yes`` (I was there) or ``no`` (I wasn't there)."""
    action: str
    visit_id: int


class ReasonSkipCb(CallbackData, prefix="noreason"):
    visit_id: int


class CodeCb(CallbackData, prefix="code"):
    visit_id: int


class CodeAgainCb(CallbackData, prefix="codeagain"):
    """The doctor's answer to "a code was sent N minutes ago; send a new one?": ``new`` or ``keep``."""
    action: str
    visit_id: int


class ChangeCb(CallbackData, prefix="chg"):
    """"This wasn't me" about one change to the patient's face, phone or consent."""
    change_id: int


def language_keyboard(suggested: str | None) -> InlineKeyboardMarkup:
    """Қазақша / Русский; the language Telegram suggests is ticked and comes first."""
    order = sorted(LANGUAGE_NAMES, key=lambda code: code != suggested)
    return InlineKeyboardMarkup(inline_keyboard=[[
        InlineKeyboardButton(text=("✓ " if code == suggested else "") + LANGUAGE_NAMES[code],
                             callback_data=LangCb(code=code).pack()) for code in order]])


def contact_keyboard() -> ReplyKeyboardMarkup:
    return ReplyKeyboardMarkup(keyboard=[[KeyboardButton(text=_("📱 Share my phone number"), request_contact=True)]],
                               resize_keyboard=True, one_time_keyboard=True)


def answer_keyboard(visit_id: int) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(inline_keyboard=[[
        InlineKeyboardButton(text=_("✅ Yes, I was there"),
                             callback_data=AnswerCb(action="yes", visit_id=visit_id).pack()),
        InlineKeyboardButton(text=_("❌ I wasn't there"),
                             callback_data=AnswerCb(action="no", visit_id=visit_id).pack()),
    ]])


def change_keyboard(change_id: int) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(inline_keyboard=[[
        InlineKeyboardButton(text=_("🚫 This wasn't me"), callback_data=ChangeCb(change_id=change_id).pack())]])


def skip_reason_keyboard(visit_id: int) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(inline_keyboard=[[
        InlineKeyboardButton(text=_("Skip"), callback_data=ReasonSkipCb(visit_id=visit_id).pack())]])


# --- chat-disputes (issue 17): "I wasn't there" confirmed once, taken back, and /visits one visit at a time -------

class SureCb(CallbackData, prefix="sure"):
    """The answer to "you were NOT at this visit, right?": ``yes`` records the dispute, ``back`` records nothing.
    ``msg`` is the message whose ✅/❌ led here (0: none); its buttons go once the answer is recorded."""
    action: str
    visit_id: int
    msg: int = 0


class UndoCb(CallbackData, prefix="undo"):
    """"I was there after all": takes a dispute back, within the take-back window, from the patient's own chat."""
    visit_id: int


class VisitsCb(CallbackData, prefix="vl"):
    """/visits: ``page`` shows a page of the list, ``open`` one visit with its choices (``page`` to return to)."""
    action: str
    page: int = 0
    visit_id: int = 0


def confirm_dispute_keyboard(visit_id: int, msg: int) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(inline_keyboard=[
        [InlineKeyboardButton(text=_("❌ Yes, I wasn't there"),
                              callback_data=SureCb(action="yes", visit_id=visit_id, msg=msg).pack())],
        [InlineKeyboardButton(text=_("↩ No, go back"),
                              callback_data=SureCb(action="back", visit_id=visit_id, msg=msg).pack())]])


def undo_keyboard(visit_id: int) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(inline_keyboard=[[
        InlineKeyboardButton(text=_("↩ Take it back: I was there after all"),
                             callback_data=UndoCb(visit_id=visit_id).pack())]])


def code_again_keyboard(visit_id: int) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(inline_keyboard=[[
        InlineKeyboardButton(text=_("🔁 Send a new code"),
                             callback_data=CodeAgainCb(action="new", visit_id=visit_id).pack()),
        InlineKeyboardButton(text=_("Keep the one sent"),
                             callback_data=CodeAgainCb(action="keep", visit_id=visit_id).pack())]])


def late_prompts_keyboard(visit_ids: list[int]) -> InlineKeyboardMarkup:
    """One row per backdated visit of the one question: "n. ✅ …" and "n. ❌ …" (n as numbered in the text)."""
    return InlineKeyboardMarkup(inline_keyboard=[[
        InlineKeyboardButton(text=f"{n}. " + _("✅ Yes, I was there"),
                             callback_data=AnswerCb(action="yes", visit_id=visit_id).pack()),
        InlineKeyboardButton(text=f"{n}. " + _("❌ I wasn't there"),
                             callback_data=AnswerCb(action="no", visit_id=visit_id).pack()),
    ] for n, visit_id in enumerate(visit_ids, start=1)])
