"""Per-request bookkeeping: a request id, one access-log line and the request metrics.

The log line carries the route *template* (``/api/v1/visits/{visit_id}``), status, duration and ids only —
never a body, a query string, a header value or a key.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time
import uuid

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from core.logs import get_logger
from server.appkeys import METRICS, REQUEST_ID

ACCESS_LOGGER = "rastau.server.access"
log = get_logger(ACCESS_LOGGER)
_access = logging.getLogger(ACCESS_LOGGER)  # asked first whether the line is wanted at all (the level caches it)
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
CLIENT_CLOSED = 499
# A request id the client did not offer: this process's random tag and a count, unique across processes and
# restarts without asking the kernel for randomness on every request (uuid4 did: a syscall each)
_process_tag = uuid.uuid4().hex[:16]
_numbers = itertools.count(1)


def new_request_id() -> str:
    return f"{_process_tag}{next(_numbers):016x}"


def _new_process_tag() -> None:  # a forked child counts on with a tag of its own
    global _process_tag
    _process_tag = uuid.uuid4().hex[:16]


os.register_at_fork(after_in_child=_new_process_tag)


def route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    offered = request.headers.get("X-Request-ID", "")
    request_id = offered if offered and _SAFE_REQUEST_ID.match(offered) else new_request_id()
    request[REQUEST_ID] = request_id
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-ID"] = request_id
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        raise
    finally:
        elapsed = time.perf_counter() - started
        route = route_template(request)
        request.app[METRICS].observe_request(request.method, route, status, elapsed)
        if _access.isEnabledFor(logging.INFO):
            log.info("request", method=request.method, route=route, status=status, ms=round(elapsed * 1000, 1))
        structlog.contextvars.clear_contextvars()
