"""The patient's side: "were you there?" answers, the optional reason for "I wasn't there", /visits, and
"this wasn't me" about a change to the patient's face, phone or consent."""
from __future__ import annotations

from contextlib import suppress

from aiogram import Bot, F, Router
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message

from bot import dispute_texts
from bot.handlers.util import append_to_message, drop_buttons
from bot.i18n import _
from bot.keyboards import (
    AnswerCb,
    ChangeCb,
    ReasonSkipCb,
    SureCb,
    UndoCb,
    VisitsCb,
    confirm_dispute_keyboard,
    skip_reason_keyboard,
    undo_keyboard,
)
from bot.reason_wait import DisputeReason, end_wait, start_wait
from core.errors import IllegalTransition, NotFound
from core.model import VisitState
from core.services import Context
from core.services.chat import ChatProfile
from core.services.dispute_answers import (
    Audience,
    ReasonTooLate,
    TakeBackClosed,
    check_disputable,
    end_reason_wait_on_time,
    patient_visit_choice,
    patient_visit_page,
    withdraw_dispute,
)
from core.services.patient_changes import dispute_change
from core.services.visits import explain_dispute, patient_confirms, patient_disputes

PER_PAGE = 8
MAX_REASON = 1000


def _refusal(exc: NotFound | IllegalTransition) -> str:
    """Why an answer about this visit was not recorded, in the patient's words."""
    if isinstance(exc, NotFound):
        return _("This visit is not among your visits; nothing was changed.")
    if exc.state == VisitState.CANCELLED.value:
        return _("This visit was cancelled by the clinic, so it was not billed.")
    if exc.state == VisitState.SCHEDULED.value:
        return _("This visit has not finished yet. Please answer after it.")
    if exc.state == VisitState.PATIENT_DISPUTED.value:
        return _("You already said you weren't there; that answer stays on record.")
    if exc.state == VisitState.PATIENT_CONFIRMED.value:
        return _("Your answer became final 48 hours after you gave it and can no longer be changed.")
    return _("This answer can't be recorded for this visit.")


def _several(profile: ChatProfile) -> bool:
    """A family number (several people, told apart by IIN): every visit shown names its patient."""
    return profile.family


async def answer(query: CallbackQuery, callback_data: AnswerCb, profile: ChatProfile, ctx: Context, bot: Bot) -> None:
    """The button says which visit; the visit must belong to the patient who pressed it. ``yes`` records "I was
    there"; ``no`` (the question, a /visits visit) and ``dispute`` (older /visits lists) only ask to confirm."""
    if not profile.patients:
        await query.answer(_("This button is for the patient of this visit. Press /start to connect."),
                           show_alert=True)
        return
    if callback_data.action != "yes":
        await _ask_to_confirm(query, callback_data.visit_id, profile, ctx, bot)
        return
    try:
        result = await patient_confirms(ctx, callback_data.visit_id, profile.patient_ids)
    except (NotFound, IllegalTransition) as exc:
        await query.answer(_refusal(exc), show_alert=True)
        return
    if not result.changed:
        await query.answer(_("Your answer is already recorded; nothing changed."))
        return
    footer = _("✅ Thank you, your answer is recorded: you were there.")
    if await _drop_visit_row(query, callback_data.visit_id):  # one visit of several in one question
        await query.answer(footer)
        return
    await query.answer(_("Thank you!"))
    if not await append_to_message(query, footer):
        await bot.send_message(query.from_user.id, footer)


def _answer_visit(button: InlineKeyboardButton) -> int | None:
    try:
        return AnswerCb.unpack(button.callback_data or "").visit_id
    except (TypeError, ValueError):
        return None


def _other_visits_asked(query: CallbackQuery, visit_id: int) -> list[list[InlineKeyboardButton]] | None:
    """The rows of the other visits when the button's message asks about several (backdated visits), else None."""
    if not isinstance(query.message, Message) or query.message.reply_markup is None:
        return None
    rows = query.message.reply_markup.inline_keyboard
    others = [row for row in rows if all(_answer_visit(b) != visit_id for b in row)]
    return others if any(_answer_visit(b) is not None for row in others for b in row) else None


async def _drop_visit_row(query: CallbackQuery, visit_id: int) -> bool:
    """Take the answered visit's row off a message that asks about several; False when it asks about one."""
    others = _other_visits_asked(query, visit_id)
    if others is None or not isinstance(query.message, Message):
        return False
    with suppress(TelegramAPIError):
        await query.message.edit_reply_markup(reply_markup=InlineKeyboardMarkup(inline_keyboard=others))
    return True


async def _ask_to_confirm(query: CallbackQuery, visit_id: int, profile: ChatProfile, ctx: Context, bot: Bot) -> None:
    """❌ records nothing yet: one question with the visit spelled out, whose «yes» records the dispute."""
    try:
        line = await check_disputable(ctx, visit_id, profile.patient_ids)
    except (NotFound, IllegalTransition) as exc:
        await query.answer(_refusal(exc), show_alert=True)
        return
    if line is None:
        await query.answer(_("Your answer is already recorded; nothing changed."))
        return
    await query.answer()
    # the message the ❌ was on loses its buttons once the answer is recorded, unless it asks about other visits too
    several = _other_visits_asked(query, visit_id) is not None
    origin = query.message.message_id if isinstance(query.message, Message) and not several else 0
    await bot.send_message(query.from_user.id, dispute_texts.confirm_dispute(line, several=_several(profile)),
                           reply_markup=confirm_dispute_keyboard(visit_id, origin))


async def dispute_confirmed(query: CallbackQuery, callback_data: SureCb, profile: ChatProfile, ctx: Context,
                            state: FSMContext, bot: Bot) -> None:
    """«Yes, I wasn't there»: recorded now; the patient is told who really heard of it, may take it back for a
    while, and may give a reason."""
    if not profile.patients:
        await query.answer(_("This button is for the patient of this visit. Press /start to connect."),
                           show_alert=True)
        return
    if callback_data.action != "yes":
        await query.answer()
        if not await replace_message(query, dispute_texts.nothing_recorded()):
            await bot.send_message(query.from_user.id, dispute_texts.nothing_recorded())
        return
    try:
        result = await patient_disputes(ctx, callback_data.visit_id, profile.patient_ids, chat_id=query.from_user.id)
    except (NotFound, IllegalTransition) as exc:
        await query.answer(_refusal(exc), show_alert=True)
        return
    if not result.changed:
        await query.answer(_("Your answer is already recorded; nothing changed."))
        await drop_buttons(query)
        return
    await query.answer()
    chat_id = query.from_user.id
    if callback_data.msg:  # the question or the /visits view the ❌ came from: its buttons are answered now
        with suppress(TelegramAPIError):
            await bot.edit_message_reply_markup(chat_id=chat_id, message_id=callback_data.msg, reply_markup=None)
    told = result.told or Audience.RECORDED_ONLY
    recorded = dispute_texts.dispute_recorded(told, ctx.settings.dispute_undo_minutes)
    if not await replace_message(query, recorded, undo_keyboard(callback_data.visit_id)):
        await bot.send_message(chat_id, recorded, reply_markup=undo_keyboard(callback_data.visit_id))
    assert result.visit.answered_at is not None, "a recorded dispute has its time"
    prompt = await bot.send_message(chat_id, dispute_texts.ask_reason(ctx.settings.dispute_reason_minutes),
                                    reply_markup=skip_reason_keyboard(callback_data.visit_id))
    await start_wait(state, visit_id=callback_data.visit_id, disputed_at=result.visit.answered_at,
                     skip_message_id=prompt.message_id)
    await end_reason_wait_on_time(ctx, callback_data.visit_id, profile.patient_ids, chat_id, prompt.message_id)


async def dispute_taken_back(query: CallbackQuery, callback_data: UndoCb, profile: ChatProfile, ctx: Context,
                             bot: Bot) -> None:
    """«I was there after all»: only this chat, only within the take-back window (the service decides both)."""
    try:
        _visit, changed, told = await withdraw_dispute(ctx, callback_data.visit_id, profile.patient_ids,
                                                       query.from_user.id)
    except NotFound:
        await query.answer(_("This visit is not among your visits; nothing was changed."), show_alert=True)
        return
    except TakeBackClosed:
        await query.answer(dispute_texts.take_back_closed(ctx.settings.dispute_undo_minutes), show_alert=True)
        await drop_buttons(query)
        return
    if not changed:
        await query.answer(dispute_texts.nothing_to_take_back())
        await drop_buttons(query)
        return
    await query.answer()
    if not await replace_message(query, dispute_texts.withdrawn(told)):
        await bot.send_message(query.from_user.id, dispute_texts.withdrawn(told))


async def replace_message(query: CallbackQuery, text: str, markup: InlineKeyboardMarkup | None = None) -> bool:
    """Put ``text`` (and ``markup``) in place of the message the button was on. False when it can't be edited."""
    if not isinstance(query.message, Message):
        return False
    try:
        await query.message.edit_text(text, reply_markup=markup)
    except TelegramBadRequest:
        return False
    return True

async def change_disputed(query: CallbackQuery, callback_data: ChangeCb, ctx: Context, bot: Bot) -> None:
    """Not tied to a linked profile: after a phone change the old chat, no longer linked, must still be able
    to object. The service checks that this chat is the one the notice went to (or the patient's own)."""
    try:
        result = await dispute_change(ctx, callback_data.change_id, query.from_user.id)
    except NotFound:
        await query.answer(_("This notice is not about you; nothing was changed."), show_alert=True)
        return
    if not result.changed:
        await query.answer(_("Your answer is already recorded; nothing changed."))
        return
    await query.answer()
    footer = _("🚫 Recorded: you did not ask for this change.") + " " + dispute_texts.told(
        result.told or Audience.RECORDED_ONLY)
    if not await append_to_message(query, footer):
        await bot.send_message(query.from_user.id, footer)


async def reason_given(message: Message, profile: ChatProfile, ctx: Context, state: FSMContext, bot: Bot) -> None:
    data = await state.get_data()
    reason = message.text or ""  # the filter lets only text in
    await end_wait(state, bot, message.chat.id)
    try:
        result = await explain_dispute(ctx, int(data.get("visit_id", "")), profile.patient_ids, reason)
    except ReasonTooLate:
        await message.answer(dispute_texts.reason_too_late())
        return
    except (NotFound, IllegalTransition, TypeError, ValueError):
        await message.answer(_("I could not attach this to the visit. Your dispute itself is recorded."))
        return
    note = dispute_texts.reason_passed(result.told or Audience.RECORDED_ONLY)
    if len(reason.strip()) > MAX_REASON:
        note += "\n" + _("Only the first {n} characters were kept.").format(n=MAX_REASON)
    await message.answer(note)


async def reason_late(message: Message) -> None:
    """Text that came after the wait had ended by time: not a reason, and the patient is told so."""
    await message.answer(dispute_texts.reason_too_late())


async def reason_not_text(message: Message) -> None:
    await message.answer(_("Please write the reason as text, or press «Skip»."))


async def reason_skipped(query: CallbackQuery, state: FSMContext, bot: Bot) -> None:
    await state.clear()
    await query.answer()
    await drop_buttons(query)
    await bot.send_message(query.from_user.id, dispute_texts.reason_skipped())


def _too_late(message: Message, reason_too_late: bool = False) -> bool:
    return reason_too_late


# --- /visits: a page of visits, one button per visit that opens its choices ---------------------------------------

async def _visits_page(ctx: Context, profile: ChatProfile, page: int) -> tuple[str, InlineKeyboardMarkup | None]:
    shown = await patient_visit_page(ctx, profile.patient_ids, page, PER_PAGE)
    rows: list[list[InlineKeyboardButton]] = []
    row: list[InlineKeyboardButton] = []
    for n, (line, (yes, no)) in enumerate(zip(shown.lines, shown.choices, strict=True), start=shown.first):
        if yes or no:
            row.append(InlineKeyboardButton(text=dispute_texts.visit_button(n, line), callback_data=VisitsCb(
                action="open", page=shown.page, visit_id=line.visit_id).pack()))
            if len(row) == 2:
                rows.append(row)
                row = []
    if row:
        rows.append(row)
    paging = []
    if shown.page > 0:
        paging.append(InlineKeyboardButton(text=dispute_texts.newer_button(),
                                           callback_data=VisitsCb(action="page", page=shown.page - 1).pack()))
    if shown.page < shown.pages - 1:
        paging.append(InlineKeyboardButton(text=dispute_texts.older_button(),
                                           callback_data=VisitsCb(action="page", page=shown.page + 1).pack()))
    text = dispute_texts.visits_page(shown.lines, first=shown.first, total=shown.total, several=_several(profile))
    hint = dispute_texts.visits_hint(bool(rows))
    if hint:
        text += "\n\n" + hint
    keyboard = rows + ([paging] if paging else [])
    return text, InlineKeyboardMarkup(inline_keyboard=keyboard) if keyboard else None


async def visits(message: Message, profile: ChatProfile, ctx: Context) -> None:
    if not profile.patients:
        await message.answer(_("/visits is for patients. Connect with /start by sharing the phone number "
                               "your clinic registered."))
        return
    text, markup = await _visits_page(ctx, profile, 0)
    await message.answer(text, reply_markup=markup)


async def visits_browse(query: CallbackQuery, callback_data: VisitsCb, profile: ChatProfile, ctx: Context,
                        bot: Bot) -> None:
    """A page of the list, or one visit with the choices that can still be recorded about it."""
    if not profile.patients:
        await query.answer(_("/visits is for patients. Connect with /start by sharing the phone number "
                             "your clinic registered."), show_alert=True)
        return
    back = InlineKeyboardButton(text=dispute_texts.back_to_list_button(),
                                callback_data=VisitsCb(action="page", page=callback_data.page).pack())
    if callback_data.action == "open":
        try:
            line, (yes, no) = await patient_visit_choice(ctx, callback_data.visit_id, profile.patient_ids)
        except NotFound:
            await query.answer(_("This visit is not among your visits; nothing was changed."), show_alert=True)
            return
        choices = ([InlineKeyboardButton(text=dispute_texts.yes_button(), callback_data=AnswerCb(
            action="yes", visit_id=line.visit_id).pack())] if yes else []) + (
            [InlineKeyboardButton(text=dispute_texts.no_button(), callback_data=AnswerCb(
                action="no", visit_id=line.visit_id).pack())] if no else [])
        text = dispute_texts.visit_choice(line, several=_several(profile), can_yes=yes, can_no=no)
        markup: InlineKeyboardMarkup | None = InlineKeyboardMarkup(inline_keyboard=[r for r in (choices, [back]) if r])
    else:
        text, markup = await _visits_page(ctx, profile, callback_data.page)
    await query.answer()
    if not await replace_message(query, text, markup):
        await bot.send_message(query.from_user.id, text, reply_markup=markup)


def build_router() -> Router:
    """A fresh Router for each Dispatcher: aiogram attaches a router to one parent only."""
    router = Router(name="patient")
    router.callback_query.register(answer, AnswerCb.filter(F.action.in_({"yes", "no", "dispute"})))
    router.callback_query.register(dispute_confirmed, SureCb.filter(F.action.in_({"yes", "back"})))
    router.callback_query.register(dispute_taken_back, UndoCb.filter())
    router.callback_query.register(visits_browse, VisitsCb.filter(F.action.in_({"page", "open"})))
    router.callback_query.register(change_disputed, ChangeCb.filter())
    router.message.register(reason_given, DisputeReason.waiting, F.text, ~F.text.startswith("/"))
    router.message.register(reason_not_text, DisputeReason.waiting, ~F.text)
    router.message.register(reason_late, _too_late, F.text, ~F.text.startswith("/"))
    router.callback_query.register(reason_skipped, ReasonSkipCb.filter())
    router.message.register(visits, Command("visits"))
    return router
