"""The auditors' read-only API: the evidence export per visit, the red flags, and the key that signs both.

Every export is a signed file (core.signed_file: JSON lines by default, CSV with ``Accept: text/csv`` or
``?format=csv``) streamed in chunks; its last line is the signature, so the file verifies alone with the public key
from ``/api/v1/audit/signing-key`` (``rastau verify-export``). The read is in the audit log before the first byte.
"""
from __future__ import annotations

import datetime as dt
from urllib.parse import urlencode

from aiohttp import hdrs, web

from core.services import audit_export
from core.services.api_keys import Scope
from core.signed_file import CSV, JSONL
from core.signing import Signer
from server.appkeys import CTX, SETTINGS
from server.auth import auditor_caller, check_read_only, public, requires
from server.bodies import query_date, query_int
from server.problems import Problem

API = "/api/v1"
SIGNER = web.AppKey("signer", Signer)
JSONL_TYPE = "application/jsonl"
routes = web.RouteTableDef()


def _day(request: web.Request, name: str) -> dt.date:
    if name not in request.query:
        raise Problem(422, "invalid_query", f"query parameter '{name}' is required: an Asia/Almaty day like "
                      "2026-11-25", field=name)
    return query_date(request, name, request.app[CTX].clock.now())


def _period(request: web.Request) -> audit_export.Period:
    return audit_export.Period(_day(request, "from"), _day(request, "to"))


def _format(request: web.Request) -> str:
    """``?format=`` wins; else CSV when the client accepts text/csv and not JSON lines; else JSON lines."""
    asked = request.query.get("format")
    if asked is not None:
        if asked not in (JSONL, CSV):
            raise Problem(422, "invalid_query", "query parameter 'format' must be jsonl or csv", field="format")
        return asked
    accept = request.headers.get(hdrs.ACCEPT, "")
    return CSV if "text/csv" in accept and JSONL_TYPE not in accept else JSONL


async def _stream(request: web.Request, export: audit_export.SignedExport, name: str,
                  headers: dict[str, str] | None = None) -> web.StreamResponse:
    fmt = _format(request)
    response = web.StreamResponse(headers={
        hdrs.CONTENT_TYPE: "text/csv; charset=utf-8" if fmt == CSV else f"{JSONL_TYPE}; charset=utf-8",
        hdrs.CONTENT_DISPOSITION: f'attachment; filename="{name}.{fmt}"', **(headers or {})})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for chunk in export.signed(fmt, request.app[SIGNER]):
        await response.write(chunk)
    await response.write_eof()
    return response


@routes.get(API + "/audit/signing-key")
@public
async def signing_key(request: web.Request) -> web.Response:
    """No secret: the public half of the key that signs every export. Compare its key id with the one the operator
    gave you out of band before trusting it."""
    signer = request.app[SIGNER]
    return web.json_response({"algorithm": "Ed25519", "public_key": signer.public_b64, "key_id": signer.key_id,
                              "ephemeral": signer.ephemeral})


@routes.get(API + "/audit/visits")
@requires(Scope.AUDIT)
async def audit_visits(request: web.Request) -> web.StreamResponse:
    period = _period(request)
    _format(request)  # a wrong format is refused before the read is recorded
    clinic_id = query_int(request, "clinic", low=1)
    export = await audit_export.export_visits(
        request.app[CTX], auditor_caller(request), period, clinic_id=clinic_id,
        cursor=query_int(request, "cursor", default=0),
        limit=query_int(request, "limit", default=audit_export.DEFAULT_PAGE, low=1, high=audit_export.MAX_PAGE))
    headers: dict[str, str] = {}
    if export.next_cursor is not None:
        following = {k: v for k, v in request.query.items() if k != "cursor"} | {"cursor": str(export.next_cursor)}
        headers["Link"] = f'<{request.path}?{urlencode(following)}>; rel="next"'
    name = f"rastau-visits-{period.first_day.isoformat()}-{period.last_day.isoformat()}-{export.about['export']}"
    return await _stream(request, export, name, headers)


@routes.get(API + "/audit/flags")
@requires(Scope.AUDIT)
async def audit_flags(request: web.Request) -> web.StreamResponse:
    period = _period(request)
    _format(request)
    export = await audit_export.export_flags(request.app[CTX], auditor_caller(request), period,
                                             clinic_id=query_int(request, "clinic", low=1),
                                             doctor_id=query_int(request, "doctor", low=1))
    name = f"rastau-flags-{period.first_day.isoformat()}-{period.last_day.isoformat()}-{export.about['export']}"
    return await _stream(request, export, name)


def install(app: web.Application) -> None:
    """The signer (RASTAU_SIGNING_KEY; production refuses to start without it) and the routes, on the app."""
    app[SIGNER] = Signer.from_settings(app[SETTINGS])
    for route in (r for r in routes if isinstance(r, web.RouteDef)):  # as create_app adds the others: no HEAD
        check_read_only(route.method, route.path, route.handler)
        app.router.add_route(route.method, route.path, route.handler, **route.kwargs)
