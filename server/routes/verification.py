"""Proof of presence: the webcam frame (in-person visits) and the patient's one-time code (any visit).

The frame is read into memory under a size cap, handed to a face worker, and dropped once the worker has
made its encoding; the response says only the decision, never the distance.
"""
from __future__ import annotations

from aiohttp import web
from pydantic import Field

from core.codes import CODE_DIGITS, CodeOutcome
from core.model import Actor
from core.services import codes, faces
from core.services.api_keys import Scope
from server.appkeys import CTX, FACE_POOL, METRICS, SETTINGS
from server.auth import caller, principal, requires
from server.bodies import Body, id_segment, path_id, read_bounded, read_json
from server.face.image import ImageRejected
from server.problems import Problem

API = "/api/v1"
VISIT = API + "/visits/" + id_segment("visit_id")
FRAME_TYPES = ("image/jpeg", "image/png")
routes = web.RouteTableDef()


class CodeIn(Body):
    code: str = Field(max_length=32, description=f"the {CODE_DIGITS} digits the patient read out",
                      json_schema_extra={"pattern": f"^[0-9]{{{CODE_DIGITS}}}$"})


@routes.post(VISIT + "/face")
@requires(Scope.WEBCAM)
async def verify_face(request: web.Request) -> web.Response:
    ctx, who = request.app[CTX], principal(request)
    visit_id = path_id(request, "visit_id", "visit")
    if not request.app[SETTINGS].single_frame_face:
        raise Problem(409, "single_frame_face_disabled", "a single frame from the clinic's system proves only that "
                      "someone had a picture of the patient, so this server takes face evidence through capture "
                      f"sessions: POST {API}/visits/{visit_id}/capture-sessions and open the answered url on the "
                      "doctor's computer (the operator may enable single frames with RASTAU_SINGLE_FRAME_FACE=1)")
    if request.content_type not in FRAME_TYPES:
        raise Problem(415, "unsupported_media_type", "send the webcam frame as the raw body with "
                      "'Content-Type: image/jpeg' or 'image/png'")
    limit = request.app[SETTINGS].face_max_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ImageRejected("too_large", f"the frame is {request.content_length} bytes; the limit is {limit}")
    # online, closed, outside its window, registered late, not enrolled, locked or capped: refused with no image work
    attempt = await faces.reserve_face_attempt(ctx, who.clinic_id, visit_id, caller=caller(request))
    try:
        frame = await read_bounded(request.content.read, limit, "the frame")
        analysis = await request.app[FACE_POOL].analyse(frame)
        del frame
        result = await faces.record_face_attempt(ctx, attempt, analysis.outcome, analysis.encoding)
    except BaseException:
        await faces.release_face_attempt(ctx, attempt)  # no decision was made: the attempt is not counted
        raise
    request.app[METRICS].face_decisions.labels(result.decision.value).inc()
    body: dict[str, object] = {"decision": result.decision.value}
    if result.retry_after is not None:
        body["face_locked_for_seconds"] = result.retry_after
    return web.json_response(body)


@routes.post(VISIT + "/code")
@requires(Scope.WEBCAM, Scope.CLINIC_SYSTEM)
async def verify_code(request: web.Request) -> web.Response:
    ctx, who = request.app[CTX], principal(request)
    visit_id = path_id(request, "visit_id", "visit")
    body = await read_json(request, CodeIn)
    check = await codes.verify_code(ctx, who.clinic_id, visit_id, body.code, actor=Actor.DOCTOR,
                                    caller=caller(request))
    request.app[METRICS].code_outcomes.labels(check.outcome.value).inc()
    if check.outcome is CodeOutcome.LOCKED:
        if check.capped_by is not None:
            wait = check.retry_after
            whose = "this doctor has" if check.capped_by == "doctor" else "this clinic's doctors have"
            raise Problem(429, f"{check.capped_by}_code_cap", f"{whose} entered too many wrong codes this hour; "
                          f"code checks resume in {wait} s; verify the patient by face (in person) meanwhile",
                          headers={"Retry-After": str(wait)}, result="locked", attempts_left=check.attempts_left)
        raise Problem(429, "code_locked", "too many wrong codes for this visit: its code is locked; verify the "
                      "patient by face (in person) or escalate to the clinic admin", result="locked",
                      attempts_left=0)
    return web.json_response({"result": check.outcome.value, "attempts_left": check.attempts_left})


@routes.post(VISIT + "/code-requests")
@requires(Scope.CLINIC_SYSTEM)
async def request_code(request: web.Request) -> web.Response:
    """Queues a fresh code for the patient's chat and says which channel carries it (409 when none can). The code
    is made at sending time and never returned here."""
    who = principal(request)
    visit_id = path_id(request, "visit_id", "visit")
    queued = await codes.request_code(request.app[CTX], who.clinic_id, visit_id, caller=caller(request))
    return web.json_response({"status": "queued", "channel": queued.channel, "requests_left": queued.requests_left},
                             status=202)
