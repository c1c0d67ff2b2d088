"""Capture sessions: the clinic's system opens one for a visit; the doctor's browser opens its one-time page, which
streams the camera's frames over a WebSocket; the server reads each frame's head pose in the face workers, follows
the session's challenge with a :class:`core.liveness.LivenessTracker` and decides. The page only shows.

One connection is one session and one process: the tracker lives in the handler, with the connection, whatever
RASTAU_SERVER_PROCESSES is. A frame is read into memory (at most FRAME_MAX_BYTES, larger ones close the connection),
handed to a worker and dropped; never on disk or in a log line. The access log names the route template, never the
token.
"""
from __future__ import annotations

import asyncio
import html
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from yarl import URL

from core.errors import DomainError
from core.liveness import MEASURED, STILLS, LivenessTracker, Progress
from core.logs import get_logger
from core.model import Language
from core.services import capture
from core.services.api_keys import Scope
from core.services.faces import FaceDecision
from server.appkeys import CTX, FACE_POOL, METRICS, SETTINGS
from server.auth import caller, principal, public, requires
from server.bodies import id_segment, path_id
from server.capture_texts import LANGUAGE_NAMES, page_texts
from server.face.image import ImageRejected
from server.face.pool import FacePoolBroken
from server.problems import Problem

API = "/api/v1"
VISIT = API + "/visits/" + id_segment("visit_id")
PAGE = "/capture/{token:[A-Za-z0-9_-]{43}}"
STATIC = Path(__file__).resolve().parents[1] / "static"
ASSETS = {"capture.js": "text/javascript", "capture.css": "text/css"}
FRAME_MAX_BYTES = 512 * 1024  # a 640×480 JPEG is 30-120 KB
POLL_S = 0.25  # how often a silent connection is checked against its step's time limit
# The page loads only what Rastau serves: its own script and style, the camera, its own WebSocket.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; media-src 'self' mediastream: blob:;"
       " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
                "Permissions-Policy": "camera=(self), microphone=(), geolocation=()", "X-Frame-Options": "DENY"}
routes = web.RouteTableDef()
log = get_logger("rastau.server.capture")
_SETTLING: set[asyncio.Task[Any]] = set()  # sessions being settled: each finishes even if its handler is cancelled


async def _settled[T](work: Coroutine[Any, Any, T]) -> T:
    """Record a session's end in a task of its own: a page that closes (which cancels its handler) or a server that
    stops cannot interrupt it half-way, so the attempt is always settled and no database connection is left
    mid-statement."""
    task = asyncio.get_running_loop().create_task(work)
    _SETTLING.add(task)
    task.add_done_callback(_SETTLING.discard)
    return await asyncio.shield(task)


async def settle_abandoned(_app: web.Application) -> None:
    """On cleanup, before the database closes: let every session being settled record its attempt."""
    if _SETTLING:
        await asyncio.gather(*_SETTLING, return_exceptions=True)


@routes.post(VISIT + "/capture-sessions")
@requires(Scope.WEBCAM)
async def open_capture_session(request: web.Request) -> web.Response:
    ctx, who = request.app[CTX], principal(request)
    visit_id = path_id(request, "visit_id", "visit")
    opened = await capture.open_session(ctx, who.clinic_id, visit_id, caller=caller(request))
    base = request.app[SETTINGS].public_url or f"{request.scheme}://{request.host}"
    return web.json_response({"session_id": opened.session_id, "visit_id": opened.visit_id,
                              "url": f"{base}/capture/{opened.token}", "expires_at": opened.expires_at.isoformat(),
                              "language": opened.language.value}, status=201)


def _language(request: web.Request, default: Language) -> Language:
    asked = request.query.get("lang")
    return Language(asked) if asked in {lang.value for lang in Language} else default


def _page(language: Language, token_path: str, *, available: bool) -> str:
    texts = page_texts(language)
    current = ' aria-current="true"'
    switch = " ".join(
        f'<a href="{html.escape(token_path)}?lang={lang.value}" lang="{lang.value}"'
        f'{current if lang is language else ""}>{html.escape(name)}</a>' for lang, name in LANGUAGE_NAMES.items())
    data = json.dumps(texts, ensure_ascii=False).replace("<", "\\u003c")  # no "</script>" can end the block early
    body = (f'<button id="start" type="button">{html.escape(texts["start"])}</button>' if available else "")
    outcome = "" if available else html.escape(texts["unavailable"])
    next_step = "" if available else f'<p>{html.escape(texts["try_again"])}</p><p>{html.escape(texts["use_code"])}</p>'
    return f"""<!DOCTYPE html>
<html lang="{language.value}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{html.escape(texts["title"])}</title>
<link rel="stylesheet" href="/capture/assets/capture.css">
</head>
<body{"" if available else ' data-outcome="unavailable"'}>
<main>
<header><h1>{html.escape(texts["title"])}</h1>
<nav aria-label="{html.escape(texts["language"])}">{switch}</nav></header>
<p>{html.escape(texts["lead"])} {html.escape(texts["allow_camera"])}</p>
<div class="camera"><video id="video" autoplay muted playsinline></video></div>
<p id="instruction" aria-live="polite"></p>
<p id="progress"></p>
<p id="outcome" aria-live="assertive">{outcome}</p>
<div id="next">{next_step}</div>
{body}
<p class="small">{html.escape(texts["privacy"])}</p>
</main>
<script type="application/json" id="texts">{data}</script>
{'<script src="/capture/assets/capture.js"></script>' if available else ""}
</body>
</html>
"""


@routes.get(PAGE)
@public
async def capture_page(request: web.Request) -> web.Response:
    """The page for an open session, in the patient's language unless ``?lang=`` asks for the other; an unknown,
    expired or used link answers 404 with a page that says what to do."""
    token = request.match_info["token"]
    try:
        session = await capture.page_session(request.app[CTX], token)
    except capture.CaptureSessionUnavailable:
        return web.Response(status=404, text=_page(_language(request, Language.RU), request.path, available=False),
                            content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)
    return web.Response(text=_page(_language(request, session.language), request.path, available=True),
                        content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)


@routes.get("/capture/assets/{name:capture\\.(js|css)}")
@public
async def capture_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return web.Response(body=(STATIC / name).read_bytes(), content_type=ASSETS[name], charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


def _same_origin(request: web.Request) -> bool:
    """A browser says where the page that opened the socket came from: only Rastau's own page may use it (a
    client without a browser sends no Origin and holds the token anyway)."""
    origin = request.headers.get("Origin")
    return origin is None or (URL(origin).host == request.url.host and URL(origin).port == request.url.port)


async def _say(socket: web.WebSocketResponse, **message: object) -> None:
    if not socket.closed:
        await socket.send_str(json.dumps(message))


async def _step(socket: web.WebSocketResponse, claimed: capture.ClaimedSession, progress: Progress) -> None:
    poses = claimed.challenge.as_json()
    await _say(socket, type="step", step=progress.step, pose=poses[progress.step], steps=len(poses),
               seconds=claimed.challenge.step_seconds)


async def _follow(request: web.Request, socket: web.WebSocketResponse,
                  claimed: capture.ClaimedSession) -> Progress | None:
    """Frames in arrival order through the tracker until it decides; None when the page stopped sending frames
    before that (closed the connection, sent something else than a frame, or a frame over the limit)."""
    pool = request.app[FACE_POOL]
    clock = asyncio.get_running_loop().time
    stills = request.app[SETTINGS].liveness_stills
    tracker = LivenessTracker(claimed.challenge, clock(), STILLS if stills else MEASURED)
    progress = tracker.progress
    await _step(socket, claimed, progress)
    while not progress.done:
        # one receive outstanding at a time, waited for in slices (cancelling aiohttp's receive mid-way, as its own
        # timeout does, breaks the connection), so a page that stops sending still meets its step's time limit
        incoming = asyncio.ensure_future(socket.receive())
        while not incoming.done():
            await asyncio.wait({incoming}, timeout=POLL_S)
            if not incoming.done() and (progress := tracker.expire(clock())).done:
                incoming.cancel()
                return progress
        message = incoming.result()
        if message.type is not WSMsgType.BINARY:
            return None  # closed, an error (a frame over FRAME_MAX_BYTES closes with 1009) or text: not a frame
        arrived = clock()
        reading = await pool.read_pose(message.data, encode=progress.encode_next)
        del message
        progress = tracker.feed(arrived, reading)
        if not progress.done:
            await _step(socket, claimed, progress)
    return progress


@routes.get(PAGE + "/ws")
@public
async def capture_socket(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    if not _same_origin(request):
        raise Problem(403, "cross_origin", "the capture socket takes frames only from Rastau's own capture page")
    socket = web.WebSocketResponse(max_msg_size=FRAME_MAX_BYTES, heartbeat=20)
    await socket.prepare(request)
    try:
        claimed = await _settled(capture.claim_session(ctx, request.match_info["token"]))
    except capture.CaptureSessionUnavailable:
        await _say(socket, type="outcome", outcome="unavailable", next="try_again")
        await socket.close()
        return socket
    except DomainError as refused:  # locked, capped, closed or outside its window since the session was opened
        await _say(socket, type="outcome", outcome="refused", code=refused.code, next="use_code",
                   retry_after=getattr(refused, "retry_after", None))
        await socket.close()
        return socket
    try:
        progress = await _follow(request, socket, claimed)
    except asyncio.CancelledError:  # the page went away (or the server is stopping): counted, never given back
        await _settled(capture.finish_session(ctx, claimed, None))
        raise
    except FacePoolBroken:
        await _settled(capture.fail_session(ctx, claimed))
        await _say(socket, type="outcome", outcome="error", next="try_again")
        await socket.close()
        return socket
    except ImageRejected:
        progress = None  # not a camera frame: the page is not Rastau's, or broken; counted like a page gone away
    result = await _settled(capture.finish_session(ctx, claimed, progress))
    request.app[METRICS].face_decisions.labels(result.decision.value).inc()
    await _say(socket, type="outcome", outcome=result.decision.value, reason=result.reason,
               next="done" if result.decision is FaceDecision.MATCH else
               ("use_code" if result.retry_after is not None else "try_again"))
    await socket.close()
    return socket
