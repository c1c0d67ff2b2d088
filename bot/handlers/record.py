"""The patient's own record (issue 16): /mydata (with a JSON or CSV copy), /withdraw and /unlink, each of the last
two behind a confirmation button. Everything is keyed by the chat pressing or typing, never by the button's data:
callback data is only a claim."""
from __future__ import annotations

from aiogram import Bot, F, Router
from aiogram.filters import Command
from aiogram.filters.callback_data import CallbackData
from aiogram.types import BufferedInputFile, CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message

from bot import record_texts
from bot.handlers.util import drop_buttons
from bot.i18n import _
from core.errors import NotFound
from core.services import Context
from core.services.chat import ChatProfile
from core.services.patient_record import my_record, record_csv, record_json, unlink_chat, withdraw_consent


class RecordCb(CallbackData, prefix="rec"):
    """``json`` / ``csv``: a copy of /mydata; ``withdraw`` / ``unlink``: confirmed; ``keep``: cancelled."""
    action: str


def _copy_keyboard() -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(inline_keyboard=[[
        InlineKeyboardButton(text="JSON", callback_data=RecordCb(action="json").pack()),
        InlineKeyboardButton(text="CSV", callback_data=RecordCb(action="csv").pack())]])


def _confirm_keyboard(action: str) -> InlineKeyboardMarkup:
    yes = _("Yes, withdraw") if action == "withdraw" else _("Yes, disconnect")
    return InlineKeyboardMarkup(inline_keyboard=[[
        InlineKeyboardButton(text=yes, callback_data=RecordCb(action=action).pack()),
        InlineKeyboardButton(text=_("No, leave it"), callback_data=RecordCb(action="keep").pack())]])


async def mydata(message: Message, ctx: Context) -> None:
    records = await my_record(ctx, message.chat.id)
    if not records:
        await message.answer(record_texts.not_a_patient("mydata"))
        return
    family = len({r.patient_id for r in records}) > 1
    for r in records:
        await message.answer(record_texts.record(r, family=family))
    await message.answer(record_texts.copy_offer(), reply_markup=_copy_keyboard())


async def copy(query: CallbackQuery, callback_data: RecordCb, ctx: Context, bot: Bot) -> None:
    records = await my_record(ctx, query.from_user.id)
    if not records:
        await query.answer(record_texts.not_a_patient("mydata"), show_alert=True)
        return
    await query.answer()
    data, name = (record_json(records), "rastau-mydata.json") if callback_data.action == "json" else \
        (record_csv(records), "rastau-mydata.csv")
    await bot.send_document(query.from_user.id, BufferedInputFile(data, filename=name),
                            caption=record_texts.copy_caption())


async def withdraw(message: Message, profile: ChatProfile) -> None:
    if not profile.patients:
        await message.answer(record_texts.not_a_patient("withdraw"))
        return
    names = sorted({p.full_name for p in profile.patients})
    await message.answer(record_texts.withdraw_prompt(names), reply_markup=_confirm_keyboard("withdraw"))


async def unlink(message: Message, profile: ChatProfile) -> None:
    if not profile.patients:
        await message.answer(record_texts.not_a_patient("unlink"))
        return
    await message.answer(record_texts.unlink_prompt(), reply_markup=_confirm_keyboard("unlink"))


async def confirmed(query: CallbackQuery, callback_data: RecordCb, ctx: Context, bot: Bot) -> None:
    chat_id = query.from_user.id
    await drop_buttons(query)
    if callback_data.action == "keep":
        await query.answer()
        await bot.send_message(chat_id, record_texts.nothing_changed())
        return
    try:
        if callback_data.action == "withdraw":
            await withdraw_consent(ctx, chat_id)
            text = record_texts.withdraw_done()
        else:
            if not await unlink_chat(ctx, chat_id):
                raise NotFound("this chat is linked to no patient")
            text = record_texts.unlink_done()
    except NotFound:
        await query.answer(record_texts.not_a_patient(callback_data.action), show_alert=True)
        return
    await query.answer()
    await bot.send_message(chat_id, text)


def build_router() -> Router:
    router = Router(name="record")
    router.message.register(mydata, Command("mydata"))
    router.message.register(withdraw, Command("withdraw"))
    router.message.register(unlink, Command("unlink"))
    router.callback_query.register(copy, RecordCb.filter(F.action.in_({"json", "csv"})))
    router.callback_query.register(confirmed, RecordCb.filter(F.action.in_({"withdraw", "unlink", "keep"})))
    return router
