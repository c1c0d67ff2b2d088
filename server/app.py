"""``create_app(settings)``: the verification server for clinic systems, webcams and clinic admins.

The application owns its database engine and face worker pool through ``cleanup_ctx`` (started before the first
request, closed after the last); tests inject a ready Context or a fake face analyser instead.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import hdrs, web, web_protocol

from core.config import Settings
from core.db.engine import create_engine
from core.db.key_cache import key_cache
from core.db.migrate import ensure_schema_current
from core.db.uow import UnitOfWorkFactory
from core.logs import configure_logging, get_logger
from core.services import Context
from server.appkeys import CTX, FACE_POOL, METRICS, SETTINGS, FaceAnalyser
from server.auth import auth_middleware, check_read_only
from server.metrics import Metrics
from server.observe import observe_middleware
from server.problems import problem_middleware, unparsable_request_problem
from server.routes import capture, digest, ops, patients, verification, visits
from server.routes.audit import install as install_audit
from server.web.app import PREFIX as WEB_PREFIX
from server.web.app import create_web_app

SHUTDOWN_TIMEOUT_S = 30.0  # on SIGINT/SIGTERM, what the requests in flight are given to finish
JSON_BODY_LIMIT = 1024 * 1024  # JSON bodies; images are streamed under settings.face_max_bytes instead
SERVER_NAME = "Rastau"  # instead of aiohttp's "Python/3.11 aiohttp/3.x.y": no versions for scanners
log = get_logger("rastau.server")


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    engine = create_engine(settings.database_url)
    try:
        await ensure_schema_current(engine)
        async with key_cache(engine) as keys:  # PostgreSQL: clinic keys read from memory while notified of changes
            app[CTX] = Context.build(settings, UnitOfWorkFactory(engine), settings.clock(), key_cache=keys)
            yield
    finally:
        await engine.dispose()


async def _face_pool(app: web.Application) -> AsyncIterator[None]:
    from server.face.pool import FacePool  # the worker processes start only in a real server

    settings = app[SETTINGS]
    pool = FacePool(settings.face_workers, max_bytes=settings.face_max_bytes, max_pixels=settings.face_max_pixels)
    warming = asyncio.create_task(pool.start())  # serve /healthz at once; /readyz says "starting" until warm
    warming.add_done_callback(_report_warm_up)
    app[FACE_POOL] = pool
    try:
        yield
    finally:
        warming.cancel()
        await pool.close()


def _report_warm_up(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    if task.exception() is not None:
        log.error("face workers failed to start", error_type=type(task.exception()).__name__)
    else:
        log.info("face workers ready")


def _private_headers(response: web.StreamResponse) -> None:
    """Every answer may carry personal data (names, phones, visits, the digest): no cache keeps it; and the
    Server header names no versions."""
    response.headers[hdrs.SERVER] = SERVER_NAME
    response.headers[hdrs.CACHE_CONTROL] = "no-store"


async def _on_response_prepare(_request: web.Request, response: web.StreamResponse) -> None:
    _private_headers(response)


def _handle_protocol_error(self: web_protocol.RequestHandler, request: web.BaseRequest, status: int = 500,
                           exc: BaseException | None = None, message: str | None = None) -> web.StreamResponse:
    """Replaces aiohttp's RequestHandler.handle_error; see _answer_protocol_errors_as_problems."""
    if request.writer.output_size > 0:  # as aiohttp: a response is already on the wire, only closing is left
        raise ConnectionError("Response is sent already, cannot send another response with the error message")
    error_type = type(exc).__name__ if exc is not None else None
    if status >= 500:
        log.error("request failed outside the middlewares", status=status, error_type=error_type)
    else:
        log.warning("malformed request refused", status=status, error_type=error_type)
    response = unparsable_request_problem(status)
    _private_headers(response)
    response.force_close()
    return response


def _answer_protocol_errors_as_problems() -> None:
    """aiohttp answers a request it cannot parse (an oversized or malformed header, a bad request line) before any
    middleware runs, in plain text quoting the offending bytes, and logs them; those bytes may be a key or an IIN.
    It offers no hook for this (aio-libs/aiohttp#3287), so its protocol's error method is replaced, once per
    process: a problem document that quotes nothing, a log line with the error type only. It only ever runs for
    requests no handler saw."""
    web_protocol.RequestHandler.handle_error = _handle_protocol_error  # type: ignore[method-assign]  # on purpose


def create_app(settings: Settings, *, ctx: Context | None = None,
               face_pool: FaceAnalyser | None = None) -> web.Application:
    _answer_protocol_errors_as_problems()
    app = web.Application(middlewares=[observe_middleware, problem_middleware, auth_middleware],
                          client_max_size=JSON_BODY_LIMIT)
    app.on_response_prepare.append(_on_response_prepare)
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    if ctx is None:
        app.cleanup_ctx.append(_database)
    else:
        app[CTX] = ctx
    if face_pool is None:
        app.cleanup_ctx.append(_face_pool)
    else:
        app[FACE_POOL] = face_pool
    app.on_cleanup.insert(0, capture.settle_abandoned)  # before the database engine is disposed (cleanup_ctx)
    for module in (ops, patients, visits, verification, capture, digest):
        for route in module.routes:  # add_route, not add_get: no implicit HEAD, which the OpenAPI contract lacks
            check_read_only(route.method, route.path, route.handler)
            app.router.add_route(route.method, route.path, route.handler, **route.kwargs)
    install_audit(app)  # the auditors' routes and the key that signs their exports
    app.add_subapp(WEB_PREFIX, create_web_app())  # the web dashboard for admins and auditors (issue 13)
    return app


def serve(settings: Settings) -> None:
    """One server process, until SIGINT/SIGTERM; the port is shared (SO_REUSEPORT) when several are configured.
    A module-level function, so that ``python -m server`` can start it in further processes."""
    configure_logging(settings.log_level, settings.log_format)
    web.run_app(create_app(settings), host=settings.server_host, port=settings.server_port,
                reuse_port=settings.server_processes > 1, shutdown_timeout=SHUTDOWN_TIMEOUT_S, access_log=None,
                print=None)
