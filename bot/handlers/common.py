"""/help, /stop and everything the bot does not understand: answered politely, never a crash.
Included last, so feature routers see every update first."""
from __future__ import annotations

from aiogram import Bot, Dispatcher, F, Router
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, Message, ReplyKeyboardRemove
from aiogram.utils.i18n import I18n

from bot import texts
from bot.i18n import _
from bot.menus import set_chat_menu
from core.services import Context
from core.services.chat import ChatProfile, stop_chat


async def help_(message: Message, profile: ChatProfile) -> None:
    await message.answer(texts.help_text(profile))


async def stop(message: Message, ctx: Context, state: FSMContext, bot: Bot, dispatcher: Dispatcher,
               i18n: I18n) -> None:
    await state.clear()
    await stop_chat(ctx, message.chat.id)
    await set_chat_menu(bot, dispatcher, i18n, message.chat.id, None, i18n.current_locale)
    await message.answer(_("You are disconnected. Rastau will not write to you any more. If you change your "
                           "mind, press /start."), reply_markup=ReplyKeyboardRemove())


async def unknown_command(message: Message) -> None:
    await message.answer(_("I don't know this command. /help lists what I can do."))


async def free_text(message: Message, profile: ChatProfile) -> None:
    if not profile.linked:
        await message.answer(_("To use Rastau, press /start and share your phone number."))
    else:
        await message.answer(_("I answer buttons and commands only; nobody reads free text here. "
                               "/help lists what I can do."))


async def media(message: Message) -> None:
    await message.answer(_("Please don't send photos, videos or files here: Rastau does not need them and "
                           "does not keep them. /help lists what I can do."))


async def anything_else(message: Message) -> None:
    """Stickers, voice, locations, polls …"""
    await message.answer(_("I can't understand this kind of message. Please use the buttons or the "
                           "commands in /help."))


async def edited(message: Message) -> None:
    await message.answer(_("Edited messages are not processed. Please send a new message instead."))


async def stale_button(query: CallbackQuery) -> None:
    await query.answer(_("This button is no longer valid."), show_alert=True)


def build_router() -> Router:
    """A fresh Router for each Dispatcher: aiogram attaches a router to one parent only."""
    router = Router(name="common")
    router.message.register(help_, Command("help"))
    router.message.register(stop, Command("stop"))
    router.message.register(unknown_command, F.text.startswith("/"))
    router.message.register(free_text, F.text)
    router.message.register(media, F.photo | F.video | F.video_note | F.document)
    router.message.register(anything_else)
    router.edited_message.register(edited)
    router.callback_query.register(stale_button)
    return router
