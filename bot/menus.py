"""The command menu each chat sees: only that person's commands (a patient never sees /code or /digest).

Telegram shows the menu of the narrowest scope it has: a chat's own (``BotCommandScopeChat``), set here whenever
the chat links, changes its language or stops; otherwise the default one, which holds only what an unconnected
chat can use. A command appears only when a handler for it is registered, so a menu never offers a command the
bot would answer with "I don't know this command".
"""
from __future__ import annotations

from aiogram import Bot, Dispatcher, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import Command
from aiogram.types import BotCommand, BotCommandScopeChat
from aiogram.utils.i18n import I18n
from babel.support import LazyProxy

from bot.i18n import __
from core.logs import get_logger
from core.services.chat import ChatProfile

log = get_logger("rastau.menus")

DESCRIPTIONS: dict[str, LazyProxy] = {
    "start": __("connect this chat"),
    "visits": __("my visits of the last 30 days"),
    "mydata": __("what Rastau keeps about me"),
    "withdraw": __("take back my consent to face recognition"),
    "unlink": __("disconnect this chat and have it forgotten"),  # issue 16
    "code": __("send a code for an online consultation"),
    "digest": __("the clinic's daily digest"),
    "language": __("change the language"),
    "privacy": __("what we keep and what we never keep"),
    "help": __("what this bot does"),
    "stop": __("disconnect and receive no more messages"),
}
HELP_FOR = {  # /help's line names what it explains to this person
    "doctor": __("what I can do for a doctor"),
    "admin": __("what I can do for a clinic administrator"),
    "auditor": __("what I can do for the payer's auditor"),
}
UNLINKED = ("start", "language", "privacy", "help")
COMMON = ("language", "privacy", "help", "stop")


def command_names(profile: ChatProfile | None) -> list[str]:
    """The chat's commands in menu order; an unconnected chat gets :data:`UNLINKED`."""
    if profile is None or not profile.linked:
        return list(UNLINKED)
    names: list[str] = []
    if profile.patients:
        names += ["visits", "mydata", "withdraw", "unlink"]
    if profile.doctors:
        names.append("code")
    if profile.admins:
        names.append("digest")
    return names + list(COMMON)


def _help_role(profile: ChatProfile | None) -> str | None:
    if profile is None or profile.patients:
        return None
    return "doctor" if profile.doctors else "admin" if profile.admins else "auditor" if profile.auditors else None


def registered_commands(dp: Dispatcher) -> set[str]:
    """Every command some router of ``dp`` handles."""
    found: set[str] = set()

    def walk(router: Router) -> None:
        for handler in router.message.handlers:
            for flt in handler.filters or ():
                if isinstance(flt.callback, Command):
                    found.update(c for c in flt.callback.commands if isinstance(c, str))
        for sub in router.sub_routers:
            walk(sub)
    walk(dp)
    found.add("start")  # CommandStart
    return found


def menu(profile: ChatProfile | None, known: set[str]) -> list[BotCommand]:
    """The menu in the current locale."""
    role = _help_role(profile)
    out = []
    for name in command_names(profile):
        if name not in known:
            continue
        text = HELP_FOR[role] if name == "help" and role else DESCRIPTIONS[name]
        out.append(BotCommand(command=name, description=str(text)))
    return out


async def publish_default(bot: Bot, i18n: I18n, known: set[str], languages: tuple[str, ...]) -> None:
    """The menu of a chat with no menu of its own: only what an unconnected chat can use, in each language."""
    for code in languages:
        with i18n.context(), i18n.use_locale(code):
            commands = menu(None, known)
        await bot.set_my_commands(commands, language_code=code)
        if code == i18n.default_locale:
            await bot.set_my_commands(commands)


async def set_chat_menu(bot: Bot, dp: Dispatcher, i18n: I18n, chat_id: int, profile: ChatProfile | None,
                        locale: str) -> None:
    """The chat's own menu (its roles, its language); a chat no longer linked falls back to the default menu.
    A menu Telegram refuses is logged: it never stops the linking or /stop it follows."""
    try:
        if profile is None or not profile.linked:
            await bot.delete_my_commands(scope=BotCommandScopeChat(chat_id=chat_id))
            return
        with i18n.use_locale(locale):
            commands = menu(profile, registered_commands(dp))
        await bot.set_my_commands(commands, scope=BotCommandScopeChat(chat_id=chat_id))
    except TelegramAPIError as exc:
        log.warning("chat menu not set", error=type(exc).__name__)
