"""/web: a clinic admin's or an auditor's one-time link to the web dashboard (issue 13).

Only in the private chat with the bot (a link posted in a group would sign in whoever opens it first). Each link is
for one role the chat holds (an admin of two clinics gets one per clinic), works once and for a few minutes; it is
sent without a preview, so Telegram does not fetch it. Links per chat are rate-limited by the core service.
"""
from __future__ import annotations

from aiogram import Router
from aiogram.enums import ChatType
from aiogram.filters import Command
from aiogram.types import LinkPreviewOptions, Message
from aiogram.utils.text_decorations import html_decoration as hd

from bot.i18n import _
from core.services import Context
from core.services.chat import ChatProfile
from core.services.web_sessions import Role, TooManyLinks, request_links


async def web_link(message: Message, profile: ChatProfile, ctx: Context) -> None:
    if not (profile.admins or profile.auditors):
        await message.answer(_("/web is only for clinic administrators and auditors."))
        return
    if message.chat.type != ChatType.PRIVATE:
        await message.answer(_("Ask for the dashboard link in your private chat with me, not in a group."))
        return
    base = ctx.settings.public_url
    if not base:
        await message.answer(_("The web dashboard's address is not set up on this server yet. Tell the operator."))
        return
    try:
        links = await request_links(ctx, profile.chat_id)
    except TooManyLinks:
        await message.answer(_("You have asked for too many links in the last hour. Try again later."))
        return
    lines = [_("Your sign-in link to the web dashboard. It works once, for {minutes} minutes. Do not forward it: "
               "whoever opens it first is signed in as you.").format(minutes=ctx.settings.web_link_minutes)]
    for link in links:
        who = _("As an auditor") if link.role is Role.AUDITOR else _("As the admin of {clinic}").format(
            clinic=hd.quote(link.label))
        lines.append(f"{who}:\n{hd.quote(base)}/web/signin/{link.token}")
    await message.answer("\n\n".join(lines), link_preview_options=LinkPreviewOptions(is_disabled=True))


def build_router() -> Router:
    """A fresh Router for each Dispatcher: aiogram attaches a router to one parent only."""
    router = Router(name="web")
    router.message.register(web_link, Command("web"))
    return router
