"""Every error leaves the server as RFC 9457 ``application/problem+json``: a stable ``type`` and machine ``code``,
and a ``detail`` that says what was wrong and how to fix it. Internals (stack traces, SQL) never leave."""
from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import ValidationError

from core.errors import (
    Conflict,
    ConsentMissing,
    DatabaseUnavailable,
    DomainError,
    IllegalTransition,
    InvalidIin,
    InvalidPhone,
    InvalidValue,
    NotFound,
    StaffPhone,
    TemplateDecryptError,
)
from core.logs import get_logger
from core.services.access import DoctorKeyForbidden
from core.services.codes import CodeRequestsCapped
from core.services.faces import FaceLocked, NotEnrolled
from core.services.patient_changes import ReplacementLimited
from server.appkeys import REQUEST_ID
from server.face.image import ImageRejected
from server.face.pool import FacePoolBroken

PROBLEM_JSON = "application/problem+json"
log = get_logger("rastau.server")

_DOMAIN_STATUS: dict[type, int] = {
    NotFound: 404, InvalidIin: 422, InvalidPhone: 422, InvalidValue: 422, ConsentMissing: 409,
    IllegalTransition: 409, Conflict: 409, NotEnrolled: 409, FaceLocked: 429, DoctorKeyForbidden: 403,
    CodeRequestsCapped: 429}
_DOMAIN_FIELD = {InvalidIin: "iin", InvalidPhone: "phone", StaffPhone: "phone"}
_IMAGE_STATUS = {"too_large": 413, "too_many_pixels": 413, "unsupported_format": 415, "empty": 422,
                 "unreadable": 422}
_AIOHTTP_CODES = {404: "route_not_found", 405: "method_not_allowed", 413: "body_too_large",
                  415: "unsupported_media_type"}


class Problem(Exception):
    """Raise from a handler to answer with a problem document."""

    def __init__(self, status: int, code: str, detail: str, *, headers: dict[str, str] | None = None,
                 **extra: Any):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.headers, self.extra = headers or {}, extra


def problem_response(status: int, code: str, detail: str, *, headers: dict[str, str] | None = None,
                     **extra: Any) -> web.Response:
    body = {"type": f"urn:rastau:problem:{code.replace('_', '-')}", "title": HTTPStatus(status).phrase,
            "status": status, "detail": detail, "code": code, **extra}
    return web.Response(status=status, text=json.dumps(body, ensure_ascii=False), content_type=PROBLEM_JSON,
                        headers=headers)


def unparsable_request_problem(status: int) -> web.Response:
    """The answer to a request aiohttp refused before routing (400: not valid HTTP, e.g. a header or the request
    line over 8190 bytes; 500/504: a failure outside the middlewares). Nothing of the request is quoted: the
    offending bytes may be a key or an IIN."""
    if status < 500:
        return problem_response(status, "bad_request", "the request is not valid HTTP/1.1 (a header or the request "
                                "line may be longer than 8190 bytes, or malformed); nothing of it was processed")
    return problem_response(status, "internal_error", "the request could not be completed; retry it, and report "
                            "it if it keeps failing")


def _domain_status(exc: DomainError) -> tuple[int, str | None]:
    classes = type(exc).__mro__
    status = next((_DOMAIN_STATUS[cls] for cls in classes if cls in _DOMAIN_STATUS), 400)
    field = getattr(exc, "field", None) or next((_DOMAIN_FIELD[cls] for cls in classes if cls in _DOMAIN_FIELD), None)
    return status, field


def validation_problem(exc: ValidationError) -> Problem:
    """Pydantic's errors → one sentence naming each field (never echoing the value: it may be an IIN)."""
    errors = []
    for err in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in err["loc"]) or "body"
        if err["type"] == "json_invalid":
            return Problem(422, "invalid_json", "the request body is not valid JSON "
                           f"({err.get('ctx', {}).get('error', 'syntax error')}); send a JSON object")
        if err["type"] == "missing":
            message = f"field '{where}' is required"
        elif err["type"] == "extra_forbidden":
            message = f"field '{where}' is not allowed here"
        elif err["type"] == "model_type":
            message = "the request body must be a JSON object"
        elif not err["loc"]:
            message = err["msg"].removeprefix("Value error, ")
        else:
            message = f"field '{where}': {err['msg'].removeprefix('Value error, ')}"
        errors.append({"field": where, "message": message})
    return Problem(422, "invalid_body", "; ".join(e["message"] for e in errors[:5]), errors=errors)


def image_problem(exc: ImageRejected, which: str | None = None) -> Problem:
    prefix = f"{which}: " if which else ""
    return Problem(_IMAGE_STATUS.get(exc.reason, 422), f"image_{exc.reason}", prefix + exc.message)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as exc:
        return problem_response(exc.status, exc.code, exc.detail, headers=exc.headers, **exc.extra)
    except (FaceLocked, ReplacementLimited) as exc:
        return problem_response(429, exc.code, exc.detail, headers={"Retry-After": str(exc.retry_after)},
                                retry_after=exc.retry_after)
    except TemplateDecryptError as exc:
        log.error("face reference failed to decrypt: tampering, or RASTAU_TEMPLATE_KEY changed")
        return problem_response(409, exc.code, exc.detail + "; re-enrol the patient's reference photos")
    except DomainError as exc:
        status, field = _domain_status(exc)
        named: dict[str, Any] = {"field": field} if field else {}
        return problem_response(status, exc.code, exc.detail, **named)
    except ImageRejected as exc:
        problem = image_problem(exc)
        return problem_response(problem.status, problem.code, problem.detail)
    except FacePoolBroken as exc:
        return problem_response(503, "face_workers_restarting", str(exc), headers={"Retry-After": "5"})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _AIOHTTP_CODES.get(exc.status, f"http_{exc.status}")
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate", "Retry-After")}
        return problem_response(exc.status, code, (exc.text or exc.reason) if exc.status != 404 else
                                f"no such endpoint: {request.method} {request.path}", headers=headers)
    except DatabaseUnavailable as exc:
        log.error("database unavailable", error_type=type(exc.__cause__ or exc).__name__)
        return problem_response(503, "database_unavailable", "the database is unreachable right now; "
                                "retry shortly", headers={"Retry-After": "5"},
                                request_id=request.get(REQUEST_ID, "-"))
    except Exception as exc:  # the last line of defence: log the cause, answer without internals
        request_id = request.get(REQUEST_ID, "-")
        log.exception("unhandled error", error_type=type(exc).__name__)
        return problem_response(500, "internal_error", "an unexpected error occurred; quote this request id "
                                f"when reporting it: {request_id}", request_id=request_id)
