"""The dashboard's sub-application: sessions from a cookie, CSRF on every POST, security headers, templates.

Every request first finds its session (cookie ``rastau_web``: HttpOnly, SameSite=Strict, Path=/web, Secure over TLS
or when RASTAU_PUBLIC_URL is https) and checks that its admin or auditor still holds the role
(core.services.web_sessions.session_user). A page that needs a user and has none redirects to the sign-in page;
every POST, except the sign-in form (which carries its own one-time pair), must carry the session's CSRF token (form
field ``csrf`` or header ``X-CSRF-Token``) or answers 403. A domain NotFound answers an HTML 404, the same for a
record of another clinic and one that does not exist.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from markupsafe import Markup

from core.clock import to_local
from core.errors import InvalidValue, NotFound
from core.logs import get_logger
from core.model import Language
from core.services import web_sessions
from core.services.web_sessions import WebUser
from server.appkeys import CTX, SETTINGS
from server.auth import public
from server.web.i18n import LANGUAGE_NAMES, N_, gettext_for

COOKIE = "rastau_web"
PREFIX = "/web"
TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = Path(__file__).resolve().parents[1] / "static"
ASSETS = {"web.css": "text/css", "vendor/htmx.min.js": "text/javascript", "favicon.svg": "image/svg+xml"}
# Only Rastau's own files; no inline script or style anywhere (htmx is told not to inject its indicator style).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
                "X-Content-Type-Options": "nosniff", "Permissions-Policy": "camera=(), microphone=(), geolocation=()"}

USER = web.RequestKey("web_user", WebUser)
SESSION_TOKEN = web.RequestKey("web_session_token", str)
ANONYMOUS_ATTR = "__rastau_web_anonymous__"
OWN_CSRF_ATTR = "__rastau_web_own_csrf__"
log = get_logger("rastau.server.web")


@dataclass(frozen=True)
class NavEntry:
    path: str  # under /web, e.g. "/day"
    msgid: str  # its name, an English msgid of the "web" domain (mark it with N_ where NAV is extended)
    auditors_only: bool = False


# The menu, in order. Another page adds its entry here (one line).
NAV: list[NavEntry] = [NavEntry("/day", N_("Day"))]
NAV += [NavEntry("/disputes", N_("Disputes")), NavEntry("/doctors", N_("Doctors")),  # dashboard-data
        NavEntry("/clinics", N_("Clinics"), auditors_only=True)]


def anonymous[H: Callable[..., Awaitable[web.StreamResponse]]](handler: H) -> H:
    """A page that needs no session (the sign-in pages, static files)."""
    setattr(handler, ANONYMOUS_ATTR, True)
    return public(handler)


def own_csrf[H: Callable[..., Awaitable[web.StreamResponse]]](handler: H) -> H:
    """A POST that carries its own proof instead of the session's CSRF token (the sign-in form only)."""
    setattr(handler, OWN_CSRF_ATTR, True)
    return handler


def web_user(request: web.Request) -> WebUser:
    """The signed-in user: pass it (or its ``caller``) to the services, which decide what it may read."""
    return request[USER]


def secure_cookies(request: web.Request) -> bool:
    public_url = request.config_dict[SETTINGS].public_url
    return request.secure or bool(public_url and public_url.startswith("https://"))


def set_session_cookie(request: web.Request, response: web.StreamResponse, token: str, max_age: int) -> None:
    response.set_cookie(COOKIE, token, path=PREFIX, httponly=True, samesite="Strict", max_age=max_age,
                        secure=secure_cookies(request))


def clear_session_cookie(request: web.Request, response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path=PREFIX, httponly=True, samesite="Strict", secure=secure_cookies(request))


async def _csrf_ok(request: web.Request, token: str) -> bool:
    presented = request.headers.get("X-CSRF-Token")
    if presented is None and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        presented = str((await request.post()).get("csrf", "")) or None
    return web_sessions.csrf_valid(token, presented)


def _language_of(request: web.Request) -> Language:
    user: WebUser | None = request.get(USER)
    if user is not None:
        return user.language
    asked = request.query.get("lang")
    return Language(asked) if asked in ("kk", "ru") else Language.RU


def render(template: str, request: web.Request, context: dict[str, Any], *, status: int = 200) -> web.Response:
    response = aiohttp_jinja2.render_template(template, request, {**_context(request), **context}, status=status)
    response.headers.update(PAGE_HEADERS)
    return response


def error_page(request: web.Request, status: int, msgid: str) -> web.Response:
    return render("error.html", request, {"status": status, "message": msgid}, status=status)


@web.middleware
async def web_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.cookies.get(COOKIE)
    if token:
        user = await web_sessions.session_user(request.config_dict[CTX], token)
        if user is not None:
            request[USER] = user
            request[SESSION_TOKEN] = token
    route_handler = request.match_info.handler
    if request.match_info.http_exception is not None:
        if request.path == PREFIX:  # the address as people type it
            raise web.HTTPSeeOther(PREFIX + "/day")
        return error_page(request, request.match_info.http_exception.status, N_("This page does not exist."))
    if USER not in request and not getattr(route_handler, ANONYMOUS_ATTR, False):
        if request.method == "GET":
            raise web.HTTPSeeOther(f"{PREFIX}/signin")
        return error_page(request, 403, N_("You are signed out. Ask the bot for a new link with /web."))
    if request.method == "POST" and not getattr(route_handler, OWN_CSRF_ATTR, False) and (
            SESSION_TOKEN not in request or not await _csrf_ok(request, request[SESSION_TOKEN])):
        log.warning("web form refused: CSRF token missing or wrong")
        return error_page(request, 403, N_("This form has expired. Open the page again and repeat."))
    try:
        response = await handler(request)
    except NotFound:
        return error_page(request, 404, N_("Nothing was found here."))
    except InvalidValue:
        return error_page(request, 400, N_("The address has a value that is not understood."))
    response.headers.update(PAGE_HEADERS)
    return response


def _context(request: web.Request) -> dict[str, Any]:
    language = _language_of(request)
    user = request.get(USER)
    token = request.get(SESSION_TOKEN)
    csrf = web_sessions.csrf_token(token) if token else ""
    return {
        "_": gettext_for(language),
        "lang": language.value,
        "languages": [(lang.value, name) for lang, name in LANGUAGE_NAMES.items()],
        "user": user,
        "csrf": csrf,
        "csrf_field": Markup('<input type="hidden" name="csrf" value="{}">').format(csrf),
        "nav": [n for n in NAV if user is not None and (user.is_auditor or not n.auditors_only)],
        "path": request.path,
        "prefix": PREFIX,
    }


def _hhmm(moment: dt.datetime | None) -> str:
    return "" if moment is None else to_local(moment).strftime("%H:%M")


def _local(moment: dt.datetime | None) -> str:
    return "" if moment is None else to_local(moment).strftime("%d.%m.%Y %H:%M:%S")


@anonymous
async def asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise NotFound("no such file")
    return web.FileResponse(STATIC / name, headers={hdrs.CONTENT_TYPE: ASSETS[name],
                                                    "X-Content-Type-Options": "nosniff"})


def create_web_app() -> web.Application:
    from server.web import dashboard_pages, pages, signin  # the pages register on their modules' route tables

    app = web.Application(middlewares=[web_middleware])
    env = aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                               undefined=jinja2.StrictUndefined)
    env.filters["hhmm"] = _hhmm
    env.filters["local"] = _local
    app.router.add_get("/static/{name:.+}", asset, allow_head=False)
    for module in (signin, pages, dashboard_pages):
        for route in module.routes:
            if isinstance(route, web.RouteDef):
                public(route.handler)  # not an API route: the session middleware above decides, not API keys
        app.router.add_routes(module.routes)
    return app
