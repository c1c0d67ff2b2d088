"""The doctor's /code: send a one-time code to the patient of an online consultation.
The doctor never sees the code; the patient reads it out and the doctor enters it in the clinic system."""
from __future__ import annotations

from aiogram import Bot, F, Router
from aiogram.filters import Command
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message

from bot import texts
from bot.handlers.util import drop_buttons
from bot.i18n import _, clock_time, ngettext
from bot.keyboards import CodeAgainCb, CodeCb, code_again_keyboard
from core.errors import IllegalTransition, NotFound
from core.services import Context
from core.services.access import Caller
from core.services.chat import ChatProfile
from core.services.codes import CodeRequestsCapped, PatientUnreachable, recent_code_sent_at, request_code
from core.services.visit_lists import doctor_online_today, visit_line


async def code_menu(message: Message, profile: ChatProfile, ctx: Context) -> None:
    if not profile.doctors:
        await message.answer(_("/code is only for doctors registered by a clinic. Patients receive their "
                               "codes here automatically."))
        return
    lines = await doctor_online_today(ctx, [d.id for d in profile.doctors if d.id is not None])  # all: stored
    if not lines:
        await message.answer(_("You have no online consultations today that are waiting for a code."))
        return
    locale = texts.locale()
    buttons = [[InlineKeyboardButton(text=f"{clock_time(line.start, locale)} — {line.patient_name}"
                                     + ("" if line.patient_reachable else " ⚠️"),
                                     callback_data=CodeCb(visit_id=line.visit_id).pack())] for line in lines]
    text = _("Your online consultations today. Choose one to send its patient a one-time code:")
    if not all(line.patient_reachable for line in lines):
        text += "\n\n" + _("⚠️ — this patient has not connected the bot; a code cannot reach them.")
    await message.answer(text, reply_markup=InlineKeyboardMarkup(inline_keyboard=buttons))


async def send_code(query: CallbackQuery, callback_data: CodeCb, profile: ChatProfile, ctx: Context,
                    bot: Bot) -> None:
    """A code sent a short while ago is not replaced unasked: the doctor learns when it went out and decides."""
    if profile.doctors:
        sent_at = await recent_code_sent_at(ctx, callback_data.visit_id)
        line = await visit_line(ctx, callback_data.visit_id) if sent_at is not None else None
        if sent_at is not None and line is not None and any(d.id == line.doctor_id for d in profile.doctors):
            await query.answer()
            await bot.send_message(query.from_user.id, texts.code_already_sent(sent_at, line.patient_name),
                                   reply_markup=code_again_keyboard(line.visit_id))
            return
    await _request(query, callback_data.visit_id, profile, ctx, bot)


async def code_again(query: CallbackQuery, callback_data: CodeAgainCb, profile: ChatProfile, ctx: Context,
                     bot: Bot) -> None:
    await drop_buttons(query)
    if callback_data.action != "new":
        await query.answer(_("The code sent earlier stays valid."))
        return
    await _request(query, callback_data.visit_id, profile, ctx, bot)


async def _request(query: CallbackQuery, visit_id: int, profile: ChatProfile, ctx: Context, bot: Bot) -> None:
    if not profile.doctors:
        await query.answer(_("/code is only for doctors registered by a clinic. Patients receive their "
                             "codes here automatically."), show_alert=True)
        return
    line = await visit_line(ctx, visit_id)
    doctor = next((d for d in profile.doctors if line is not None and d.id == line.doctor_id), None)
    if line is None or doctor is None:
        await query.answer(_("This consultation is not in your list."), show_alert=True)
        return
    try:
        assert doctor.id is not None, "a doctor read from storage"
        await request_code(ctx, doctor.clinic_id, line.visit_id, caller=Caller.of_doctor_chat(doctor.id))
    except NotFound:
        await query.answer(_("This consultation is not in your list."), show_alert=True)
        return
    except PatientUnreachable:
        await query.answer(_("This patient has not connected the bot, so a code cannot reach them. Please "
                             "verify the consultation another way."), show_alert=True)
        return
    except CodeRequestsCapped:
        await query.answer(_("All the codes allowed for this consultation have been sent. Ask the patient to "
                             "read out the latest one."), show_alert=True)
        return
    except IllegalTransition as exc:
        if exc.state != "scheduled":
            await query.answer(_("This consultation is already verified or closed."), show_alert=True)
        else:
            lead = ctx.settings.code_issue_lead_minutes
            await query.answer(ngettext(
                "A code can be sent from {minutes} minute before the start until the consultation window "
                "closes.",
                "A code can be sent from {minutes} minutes before the start until the consultation window "
                "closes.", lead).format(minutes=lead), show_alert=True)
        return
    await query.answer(_("Sent to the patient."))
    await bot.send_message(query.from_user.id, _(
        "Sent to the patient ({name}, {time}). Ask them to read the code to you and enter it in the clinic "
        "system.").format(name=texts.q(line.patient_name), time=clock_time(line.start, texts.locale())))


def build_router() -> Router:
    """A fresh Router for each Dispatcher: aiogram attaches a router to one parent only."""
    router = Router(name="doctor")
    router.message.register(code_menu, Command("code"))
    router.callback_query.register(send_code, CodeCb.filter())
    router.callback_query.register(code_again, CodeAgainCb.filter(F.action.in_({"new", "keep"})))
    return router
