"""/start, /language, /privacy and linking the chat through a shared contact."""
from __future__ import annotations

import re

from aiogram import Bot, Dispatcher, F, Router
from aiogram.filters import Command, CommandStart, StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, Message, ReplyKeyboardRemove
from aiogram.utils.i18n import I18n

from bot import texts
from bot.handlers.util import drop_buttons
from bot.i18n import _
from bot.keyboards import LANGUAGE_NAMES, LangCb, contact_keyboard, language_keyboard
from bot.menus import set_chat_menu
from bot.middlewares import telegram_language
from core.model import Language
from core.services import Context
from core.services.chat import ChatProfile, chat_profile, link_chat_by_phone, set_language

PHONE_LIKE = re.compile(r"\+?[\d\s\-().]{10,24}")


async def start(message: Message, profile: ChatProfile, state: FSMContext) -> None:
    """Greeting in both languages; Telegram's language preselects a button, the user decides. A chat that is
    already connected is told so, in its language, with the button that connects anyone registered since."""
    await state.clear()
    if profile.linked:
        await message.answer(texts.already_linked(), reply_markup=contact_keyboard())
        return
    suggested = profile.preferred_language.value if profile.preferred_language else \
        telegram_language(message.from_user)
    await message.answer(texts.greeting(), reply_markup=language_keyboard(suggested))


async def choose_language(message: Message, i18n: I18n) -> None:
    await message.answer(_("Choose your language:"), reply_markup=language_keyboard(i18n.current_locale))


async def language_chosen(query: CallbackQuery, callback_data: LangCb, ctx: Context, i18n: I18n, bot: Bot,
                          dispatcher: Dispatcher) -> None:
    chat_id = query.from_user.id
    await set_language(ctx, chat_id, Language(callback_data.code))
    profile = await chat_profile(ctx, chat_id)
    with i18n.use_locale(callback_data.code):
        await query.answer(LANGUAGE_NAMES[callback_data.code])
        await drop_buttons(query)
        if profile.linked:
            await bot.send_message(chat_id, _("Done: I will write to you in this language."),
                                         reply_markup=ReplyKeyboardRemove())
            await set_chat_menu(bot, dispatcher, i18n, chat_id, profile, callback_data.code)
        else:
            await bot.send_message(chat_id, texts.privacy_notice(), reply_markup=contact_keyboard())


async def privacy(message: Message, profile: ChatProfile) -> None:
    if profile.linked:
        await message.answer(texts.privacy_notice(ask_to_connect=False))
    else:
        await message.answer(texts.privacy_notice(), reply_markup=contact_keyboard())


async def typed_phone(message: Message) -> None:
    """A number typed while the contact button is shown: the button, not a restart (typing proves nothing)."""
    await message.answer(texts.press_the_button(), reply_markup=contact_keyboard())


def looks_like_phone(message: Message) -> bool:
    text = message.text or ""
    return bool(PHONE_LIKE.fullmatch(text.strip())) and sum(ch.isdigit() for ch in text) >= 10


async def contact_shared(message: Message, ctx: Context, i18n: I18n, bot: Bot, dispatcher: Dispatcher) -> None:
    """Only the sender's own contact proves a phone; then it must match someone a clinic registered."""
    contact, sender = message.contact, message.from_user
    if contact is None or sender is None or contact.user_id != sender.id:
        await message.answer(_("This is not your own contact. Please press the button below: it shares the "
                               "number of this Telegram account."), reply_markup=contact_keyboard())
        return
    result = await link_chat_by_phone(ctx, message.chat.id, contact.phone_number, i18n.current_locale)
    if not result.linked:
        await message.answer(
            _("The number {phone} is not registered in any clinic connected to Rastau. Please ask your "
              "clinic's registry to register this number for you, then press /start again.").format(
                phone=texts.q(result.phone or contact.phone_number)),
            reply_markup=ReplyKeyboardRemove())
        return
    profile = await chat_profile(ctx, message.chat.id)
    await message.answer(texts.linked_summary(profile), reply_markup=ReplyKeyboardRemove())
    await set_chat_menu(bot, dispatcher, i18n, message.chat.id, profile, i18n.current_locale)


def build_router() -> Router:
    """A fresh Router for each Dispatcher: aiogram attaches a router to one parent only."""
    router = Router(name="start")
    router.message.register(start, CommandStart())
    router.message.register(choose_language, Command("language"))
    router.callback_query.register(language_chosen, LangCb.filter(F.code.in_(LANGUAGE_NAMES)))
    router.message.register(privacy, Command("privacy"))
    router.message.register(contact_shared, F.contact)
    router.message.register(typed_phone, StateFilter(None), F.text, looks_like_phone)
    return router
