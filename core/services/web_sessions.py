"""Signing in to the web dashboard without a password (issue 13).

``/web`` in a clinic admin's or an auditor's chat asks :func:`request_links`: one link per role the chat holds (an
admin of two clinics gets two), each good once, for ``web_link_minutes``. Opening one (:func:`open_link`) starts a
session for exactly that admin or auditor: the link names the role row, so another clinic's admin holding it gets
that same admin's view, never their own clinic's widened, and a forwarded link is spent the first time it is used.
Every request checks the session again (:func:`session_user`): an auditor removed, or an admin or auditor whose
chat is no longer the one that signed in, ends the session on the spot.

Links and sessions are stored only as SHA-256 hashes of their tokens (256 random bits each: a hash without a key is
enough, no guessing reaches them).
"""
from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from core.db.uow import UnitOfWork
from core.db.web import web_repo
from core.errors import DomainError, NotFound
from core.model import Language
from core.services import Context
from core.services.access import Caller

LINKS_KEPT = dt.timedelta(days=1)
SESSIONS_KEPT = dt.timedelta(days=30)


class Role(str, enum.Enum):
    ADMIN = "admin"
    AUDITOR = "auditor"


class NotDashboardUser(DomainError):
    """The chat is neither a clinic admin's nor a live auditor's."""
    code = "not_dashboard_user"


class TooManyLinks(DomainError):
    code = "too_many_links"


@dataclass(frozen=True)
class SignInLink:
    token: str  # the secret: shown once, in the chat that asked
    role: Role
    subject_id: int
    label: str  # the clinic's name for an admin; empty for an auditor
    expires_at: dt.datetime


@dataclass(frozen=True)
class WebUser:
    """Who a live session is: their role row, name, clinics (None: every clinic), language and API-style caller."""
    session_id: int
    role: Role
    subject_id: int
    name: str
    language: Language
    clinic_ids: frozenset[int] | None
    caller: Caller
    csrf_token: str

    @property
    def is_auditor(self) -> bool:
        return self.role is Role.AUDITOR


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(session_token: str) -> str:
    """The session's CSRF token: derived from the cookie's secret, so a page of another site, which can neither read
    the cookie nor the page, cannot know it; and nothing more to store."""
    return hmac.new(session_token.encode(), b"rastau-web-csrf", hashlib.sha256).hexdigest()


def csrf_valid(session_token: str, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(csrf_token(session_token), presented)


async def request_links(ctx: Context, chat_id: int) -> list[SignInLink]:
    """A fresh one-time link for each admin and live auditor row this chat is linked to."""
    now = ctx.clock.now()
    expires = now + dt.timedelta(minutes=ctx.settings.web_link_minutes)
    async with ctx.uow() as uow:
        admins = await uow.admins.by_chat(chat_id)
        auditors = await uow.auditors.by_chat(chat_id)
        if not admins and not auditors:
            raise NotDashboardUser("this chat is neither a clinic admin's nor an auditor's")
        if await web_repo(uow).links_since(chat_id, now - dt.timedelta(hours=1)) >= ctx.settings.web_links_per_hour:
            raise TooManyLinks("too many sign-in links asked for in the last hour")
        # nothing kept longer than it is needed: a spent or expired link after a day (the hourly limit counts the
        # last hour), a session after a month (the language it chose is remembered by the newest one)
        await web_repo(uow).prune(now - LINKS_KEPT, now - SESSIONS_KEPT)
        names = await uow.queries.clinic_names({a.clinic_id for a in admins})
        links = []
        for role, subject_id, label in ([(Role.ADMIN, a.id, names.get(a.clinic_id, "")) for a in admins
                                         if a.id is not None]
                                        + [(Role.AUDITOR, au.id, "") for au in auditors]):
            token = secrets.token_urlsafe(32)
            await web_repo(uow).add_link(token_hash=token_hash(token), chat_id=chat_id, role=role.value,
                                   subject_id=subject_id, now=now, expires_at=expires)
            links.append(SignInLink(token, role, subject_id, label, expires))
        await uow.commit()
    return links


async def _still_holds(uow: UnitOfWork, role: Role, subject_id: int, chat_id: int) -> tuple[str, Language | None,
                                                                                          frozenset[int] | None,
                                                                                          Caller] | None:
    """The name, stored language, clinics and caller of this admin or auditor while the chat still holds the role;
    None when it no longer does (removed, or linked to another chat since)."""
    try:
        if role is Role.ADMIN:
            admin = await uow.admins.get(subject_id)
            if admin.chat_id != chat_id:
                return None
            return admin.full_name, None, frozenset({admin.clinic_id}), Caller(f"web:admin:{subject_id}")
        auditor = await uow.auditors.get(subject_id)
    except NotFound:
        return None
    if auditor.removed_at is not None or auditor.chat_id != chat_id:
        return None
    clinics = None if auditor.all_clinics else frozenset(auditor.clinic_ids)
    return (auditor.full_name, auditor.language, clinics,
            Caller(f"auditor:{subject_id}:web", auditor_id=subject_id, auditor_clinics=clinics))


async def open_link(ctx: Context, link_token: str) -> str | None:
    """Spend the link and start a session: the session's token (for the cookie), or None when the link is unknown,
    used, expired, or its admin or auditor is gone. The language is the one chosen last time, else the chat's."""
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        link = await web_repo(uow).spend_link(token_hash(link_token), now)
        if link is None:
            return None
        role = Role(link.role)
        held = await _still_holds(uow, role, link.subject_id, link.chat_id)
        if held is None:
            await uow.commit()  # the link stays spent
            return None
        _name, stored_language, clinics, _caller = held
        chat = await uow.queries.chat_user(link.chat_id)
        language = (await web_repo(uow).last_language(role.value, link.subject_id)
                    or (chat.language if chat is not None else None)
                    or (stored_language.value if stored_language else Language.RU.value))
        token = secrets.token_urlsafe(32)
        await web_repo(uow).add_session(token_hash=token_hash(token), chat_id=link.chat_id, role=role.value,
                                  subject_id=link.subject_id, language=language, now=now,
                                  expires_at=now + dt.timedelta(hours=ctx.settings.web_session_hours))
        clinic_id = next(iter(clinics)) if role is Role.ADMIN and clinics else None
        await uow.audit.append(now, f"web:{role.value}:{link.subject_id}", "web.sign_in",
                               f"{role.value}:{link.subject_id}", {}, clinic_id=clinic_id)
        await uow.commit()
    return token


async def session_user(ctx: Context, session_token: str) -> WebUser | None:
    """Who this session is now, or None (unknown, expired, signed out, or the user gone: then it ends here)."""
    now = ctx.clock.now()
    async with ctx.uow(read_only=True) as uow:
        row = await web_repo(uow).live_session(token_hash(session_token), now)
        if row is None:
            return None
        role = Role(row.role)
        held = await _still_holds(uow, role, row.subject_id, row.chat_id)
    if held is None:
        async with ctx.uow() as uow:
            await web_repo(uow).end_session(row.id, now)
            await uow.commit()
        return None
    name, _stored, clinics, caller = held
    return WebUser(session_id=row.id, role=role, subject_id=row.subject_id, name=name,
                   language=Language(row.language), clinic_ids=clinics, caller=caller,
                   csrf_token=csrf_token(session_token))


async def sign_out(ctx: Context, user: WebUser) -> None:
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        await web_repo(uow).end_session(user.session_id, now)
        await uow.commit()


async def set_language(ctx: Context, user: WebUser, language: Language) -> None:
    """Remembered on the session, and so for the next sign-in of the same admin or auditor."""
    async with ctx.uow() as uow:
        await web_repo(uow).set_language(user.session_id, language.value)
        await uow.commit()
