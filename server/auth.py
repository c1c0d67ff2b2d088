"""Bearer API keys and scopes. Each route declares who may call it; an undeclared route answers 403 to everyone.

Another clinic's records answer 404 (from the clinic-scoped queries), so a key cannot learn what exists elsewhere;
a key bound to one doctor is scoped by the services it calls (core.services.access), given as :func:`caller`.
An auditor's key holds the ``audit`` scope only, which opens read routes only (:func:`check_read_only` at start):
every other route answers it 403 ``auditor_read_only`` before its handler runs; its clinics are scoped by the
services (:func:`auditor_caller`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from core.services import api_keys
from core.services.access import Caller
from core.services.api_keys import ApiPrincipal, AuditorPrincipal, Scope
from server.appkeys import CTX, PRINCIPAL
from server.problems import Problem

ACCESS_ATTR = "__rastau_access__"
_Handler = TypeVar("_Handler", bound=Callable[..., Any])  # a route handler, returned as it came
_CHALLENGE = 'Bearer realm="rastau"'
AUDITOR = web.RequestKey("auditor", AuditorPrincipal)


@dataclass(frozen=True)
class Access:
    scopes: frozenset[Scope] | None  # None: public (no key needed)


def requires(*scopes: Scope) -> Callable[[_Handler], _Handler]:
    """Mark a handler as callable by a key holding any one of ``scopes``."""
    def mark(handler: _Handler) -> _Handler:
        setattr(handler, ACCESS_ATTR, Access(frozenset(scopes)))
        return handler
    return mark


def public[Handler: Callable[..., Any]](handler: Handler) -> Handler:
    setattr(handler, ACCESS_ATTR, Access(None))
    return handler


def access_of(handler: object) -> Access | None:
    return getattr(handler, ACCESS_ATTR, None)


def check_read_only(method: str, path: str, handler: object) -> None:
    """At start: a route open to auditors' keys reads only (GET), so no write can ever take an auditor's key."""
    access = access_of(handler)
    if access is not None and access.scopes is not None and Scope.AUDIT in access.scopes and method != "GET":
        raise RuntimeError(f"{method} {path} is open to auditors' keys, which write nothing: make it GET or drop "
                           "the audit scope")


def principal(request: web.Request) -> ApiPrincipal:
    return request[PRINCIPAL]


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.match_info.http_exception is not None:  # no route: let aiohttp answer 404/405
        return await handler(request)
    access = access_of(request.match_info.handler)
    if access is None:
        raise Problem(403, "forbidden", "this endpoint is not open to API keys")
    if access.scopes is None:
        return await handler(request)
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Problem(401, "unauthenticated", "send the clinic's API key as 'Authorization: Bearer <key>'",
                      headers={"WWW-Authenticate": _CHALLENGE})
    try:
        found = await api_keys.authenticate(request.app[CTX], presented.strip())
    except api_keys.ApiKeyExpired as exc:
        raise Problem(401, exc.code, exc.detail + " (rastau add-api-key)",
                      headers={"WWW-Authenticate": _CHALLENGE + ', error="invalid_token"'}) from None
    if found is None:
        raise Problem(401, "invalid_api_key", "the API key is unknown or revoked; ask the clinic admin for a "
                      "valid key", headers={"WWW-Authenticate": _CHALLENGE + ', error="invalid_token"'})
    if isinstance(found, AuditorPrincipal):
        structlog.contextvars.bind_contextvars(key_prefix=found.key_prefix, auditor_id=found.auditor_id)
        if Scope.AUDIT not in access.scopes:
            raise Problem(403, "auditor_read_only", "an auditor's key reads the evidence of its clinics "
                          "(/api/v1/audit/...) and nothing else; it never writes")
        request[AUDITOR] = found
        return await handler(request)
    structlog.contextvars.bind_contextvars(key_prefix=found.key_prefix, clinic_id=found.clinic_id)
    if not access.scopes & found.scopes:
        needed = " or ".join(sorted(s.value for s in access.scopes))
        raise Problem(403, "insufficient_scope", f"this API key lacks the {needed} scope needed here",
                      headers={"WWW-Authenticate": _CHALLENGE + f', error="insufficient_scope", scope="{needed}"'})
    request[PRINCIPAL] = found
    return await handler(request)


def caller(request: web.Request) -> Caller:
    """The key as the services see it: named in changes and the audit log, and scoped to its doctor (if bound)."""
    return Caller.of_key(principal(request))


def auditor_caller(request: web.Request) -> Caller:
    """An auditor's key as the services see it: named in the audit rows of its reads, scoped to its clinics."""
    return Caller.of_auditor_key(request[AUDITOR])
