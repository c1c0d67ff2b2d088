"""The patient's side: "were you there?" answers, the optional reason for "I wasn't there", /visits, and
"this wasn't me" about a change to the patient's face, phone or consent."""
from __future__ import annotations

import datetime as dt

from aiogram import Bot, F, Router
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message

from bot import texts
from bot.handlers.util import append_to_message, drop_buttons
from bot.i18n import _
from bot.keyboards import AnswerCb, ChangeCb, ReasonSkipCb, skip_reason_keyboard
from core.errors import IllegalTransition, NotFound
from core.model import ANSWER_CORRECTION_WINDOW, VisitState
from core.services import Context
from core.services.chat import ChatProfile
from core.services.patient_changes import dispute_change
from core.services.visit_lists import VisitLine, patient_visits
from core.services.visits import explain_dispute, patient_confirms, patient_disputes

MAX_LISTED = 15
MAX_REASON = 1000


class DisputeReason(StatesGroup):
    waiting = State()


def _refusal(exc: IllegalTransition) -> str:
    if exc.state == VisitState.CANCELLED.value:
        return _("This visit was cancelled by the clinic, so it was not billed.")
    if exc.state == VisitState.SCHEDULED.value:
        return _("This visit has not finished yet. Please answer after it.")
    if exc.state == VisitState.PATIENT_DISPUTED.value:
        return _("You already said you weren't there; that answer stays on record.")
    if exc.state == VisitState.PATIENT_CONFIRMED.value:
        return _("Your answer became final 48 hours after you gave it and can no longer be changed.")
    return _("This answer can't be recorded for this visit.")


def _disputable(line: VisitLine, now: dt.datetime) -> bool:
    """Started, not cancelled, not disputed already, and not a confirmation that became final."""
    if line.start > now or line.state in (VisitState.CANCELLED, VisitState.PATIENT_DISPUTED):
        return False
    if line.state is VisitState.PATIENT_CONFIRMED:
        return line.answered_at is not None and now - line.answered_at <= ANSWER_CORRECTION_WINDOW
    return True


async def answer(query: CallbackQuery, callback_data: AnswerCb, profile: ChatProfile, ctx: Context,
                 state: FSMContext, bot: Bot) -> None:
    """The button says which visit; the visit must belong to the patient who pressed it.
    ``yes``/``no`` come from the "were you there?" question, ``dispute`` from the /visits list."""
    if not profile.patients:
        await query.answer(_("This button is for the patient of this visit. Press /start to connect."),
                           show_alert=True)
        return
    action = patient_confirms if callback_data.action == "yes" else patient_disputes
    try:
        result = await action(ctx, callback_data.visit_id, profile.patient_ids)
    except NotFound:
        await query.answer(_("This visit is not among your visits; nothing was changed."), show_alert=True)
        return
    except IllegalTransition as exc:
        await query.answer(_refusal(exc), show_alert=True)
        return
    if not result.changed:
        await query.answer(_("Your answer is already recorded; nothing changed."))
        return
    if callback_data.action == "yes":
        await query.answer(_("Thank you!"))
        footer = _("✅ Thank you, your answer is recorded: you were there.")
    else:
        await query.answer()
        footer = _("❌ Recorded: you were not there. The clinic's administrators have been told.")
    if callback_data.action == "dispute" or not await append_to_message(query, footer):
        await bot.send_message(query.from_user.id, footer)
    if callback_data.action != "yes":
        await state.set_state(DisputeReason.waiting)
        await state.update_data(visit_id=callback_data.visit_id)
        await bot.send_message(
            query.from_user.id,
            _("If you want, write in one message what happened, for example: «I was at work that day». "
              "Your words go to the clinic's administrators. Or press «Skip»."),
            reply_markup=skip_reason_keyboard(callback_data.visit_id))


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
    footer = _("🚫 Recorded: you did not ask for this change. The clinic's administrators have been told.")
    if not await append_to_message(query, footer):
        await bot.send_message(query.from_user.id, footer)


async def reason_given(message: Message, profile: ChatProfile, ctx: Context, state: FSMContext) -> None:
    visit_id = (await state.get_data()).get("visit_id", "")
    reason = message.text or ""  # the filter lets only text in
    await state.clear()
    try:
        await explain_dispute(ctx, int(visit_id), profile.patient_ids, reason)
    except (NotFound, IllegalTransition, TypeError, ValueError):
        await message.answer(_("I could not attach this to the visit. Your dispute itself is recorded."))
        return
    note = _("Thank you. Your explanation has been passed to the clinic's administrators.")
    if len(reason.strip()) > MAX_REASON:
        note += "\n" + _("Only the first {n} characters were kept.").format(n=MAX_REASON)
    await message.answer(note)


async def reason_not_text(message: Message) -> None:
    await message.answer(_("Please write the reason as text, or press «Skip»."))


async def reason_skipped(query: CallbackQuery, state: FSMContext, bot: Bot) -> None:
    await state.clear()
    await query.answer()
    await drop_buttons(query)
    await bot.send_message(query.from_user.id, _("All right. Your answer is recorded and the clinic "
                                                       "has been told."))


async def visits(message: Message, profile: ChatProfile, ctx: Context) -> None:
    if not profile.patients:
        await message.answer(_("/visits is for patients. Connect with /start by sharing the phone number "
                               "your clinic registered."))
        return
    lines = await patient_visits(ctx, profile.patient_ids)
    if not lines:
        await message.answer(_("You have no visits in the last 30 days."))
        return
    now = ctx.clock.now()
    shown = lines[:MAX_LISTED]
    buttons = [[InlineKeyboardButton(text=texts.visit_button_label(n, line),
                                     callback_data=AnswerCb(action="dispute", visit_id=line.visit_id).pack())]
               for n, line in enumerate(shown, start=1) if _disputable(line, now)]
    text = texts.visit_lines(lines, MAX_LISTED)
    if buttons:
        text += "\n\n" + _("If you were not at one of these visits, press its button below.")
    await message.answer(text, reply_markup=InlineKeyboardMarkup(inline_keyboard=buttons) if buttons else None)


def build_router() -> Router:
    """A fresh Router for each Dispatcher: aiogram attaches a router to one parent only."""
    router = Router(name="patient")
    router.callback_query.register(answer, AnswerCb.filter(F.action.in_({"yes", "no", "dispute"})))
    router.callback_query.register(change_disputed, ChangeCb.filter())
    router.message.register(reason_given, DisputeReason.waiting, F.text, ~F.text.startswith("/"))
    router.message.register(reason_not_text, DisputeReason.waiting, ~F.text)
    router.callback_query.register(reason_skipped, ReasonSkipCb.filter())
    router.message.register(visits, Command("visits"))
    return router
