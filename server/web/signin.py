"""Signing in by the bot's one-time link, signing out, choosing the language.

Opening the link (GET) only shows a "Sign in" button: chat apps and scanners fetch links to preview them, and a GET
that spent the link would sign them in instead of the user. The button's POST spends it. That form carries a proof
bound to a cookie the GET set (SameSite=Strict), so another site cannot post a link of its own into someone's
browser and sign them in as someone else.
"""
from __future__ import annotations

import secrets

from aiohttp import web

from core.model import Language
from core.services import web_sessions
from server.appkeys import CTX, SETTINGS
from server.web.app import (
    PREFIX,
    anonymous,
    clear_session_cookie,
    own_csrf,
    render,
    secure_cookies,
    set_session_cookie,
    web_user,
)
from server.web.i18n import N_

routes = web.RouteTableDef()
TOKEN = "{token:[A-Za-z0-9_-]{43}}"
NONCE_COOKIE = "rastau_signin"


@routes.get("/signin", allow_head=False)
@anonymous
async def signin_help(request: web.Request) -> web.Response:
    return render("signin.html", request, {"token": None, "proof": None, "message": None})


@routes.get("/signin/" + TOKEN, allow_head=False)
@anonymous
async def signin_page(request: web.Request) -> web.Response:
    nonce = secrets.token_urlsafe(32)
    response = render("signin.html", request, {"token": request.match_info["token"],
                                               "proof": web_sessions.csrf_token(nonce), "message": None})
    response.set_cookie(NONCE_COOKIE, nonce, path=PREFIX + "/signin", httponly=True, samesite="Strict",
                        max_age=15 * 60, secure=secure_cookies(request))
    return response


@routes.post("/signin/" + TOKEN)
@own_csrf
@anonymous
async def signin(request: web.Request) -> web.Response:
    form = await request.post()
    nonce = request.cookies.get(NONCE_COOKIE, "")
    if not nonce or not web_sessions.csrf_valid(nonce, str(form.get("proof", "")) or None):
        return render("signin.html", request, {"token": None, "proof": None, "message": N_(
            "This sign-in form has expired. Open the link from the chat again.")}, status=403)
    token = await web_sessions.open_link(request.config_dict[CTX], request.match_info["token"])
    if token is None:
        return render("signin.html", request, {"token": None, "proof": None, "message": N_(
            "This link has expired or has already been used. Send /web to the bot for a new one.")}, status=403)
    response = web.HTTPSeeOther(PREFIX + "/day")
    set_session_cookie(request, response, token, request.config_dict[SETTINGS].web_session_hours * 3600)
    response.del_cookie(NONCE_COOKIE, path=PREFIX + "/signin")
    raise response


@routes.post("/signout")
async def signout(request: web.Request) -> web.Response:
    user = web_user(request)
    await web_sessions.sign_out(request.config_dict[CTX], user)
    response = web.HTTPSeeOther(f"{PREFIX}/signin?lang={user.language.value}")  # still in the user's language
    clear_session_cookie(request, response)
    raise response


@routes.post("/language")
async def language(request: web.Request) -> web.Response:
    form = await request.post()
    chosen = str(form.get("lang", ""))
    if chosen in ("kk", "ru"):
        await web_sessions.set_language(request.config_dict[CTX], web_user(request), Language(chosen))
    back = str(form.get("next", ""))
    # only a page of the dashboard: never an address of another site (no open redirect)
    if not back.startswith(PREFIX + "/") or back.startswith("//") or "\\" in back or "//" in back:
        back = PREFIX + "/day"
    raise web.HTTPSeeOther(back)
