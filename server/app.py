"""``create_app(settings)``: the verification server for clinic systems, webcams and clinic admins.

The application owns its database engine and face worker pool through ``cleanup_ctx`` (started before the first
request, closed after the last); tests inject a ready Context or a fake face analyser instead.
"""
from __future__ import annotations

import asyncio

from aiohttp import web

from core.clock import SystemClock
from core.config import Settings
from core.db.engine import create_engine
from core.db.migrate import ensure_schema_current
from core.db.uow import UnitOfWorkFactory
from core.logs import get_logger
from core.services import Context
from server.appkeys import CTX, FACE_POOL, METRICS, SETTINGS, FaceAnalyser
from server.auth import auth_middleware
from server.metrics import Metrics
from server.observe import observe_middleware
from server.problems import problem_middleware
from server.routes import digest, ops, patients, verification, visits

JSON_BODY_LIMIT = 1024 * 1024  # JSON bodies; images are streamed under settings.face_max_bytes instead
log = get_logger("rastau.server")


async def _database(app: web.Application):
    settings = app[SETTINGS]
    engine = create_engine(settings.database_url)
    try:
        await ensure_schema_current(engine)
        app[CTX] = Context.build(settings, UnitOfWorkFactory(engine), SystemClock())
        yield
    finally:
        await engine.dispose()


async def _face_pool(app: web.Application):
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


def _report_warm_up(task: asyncio.Task) -> None:
    if task.cancelled():
        return
    if task.exception() is not None:
        log.error("face workers failed to start", error_type=type(task.exception()).__name__)
    else:
        log.info("face workers ready")


def create_app(settings: Settings, *, ctx: Context | None = None,
               face_pool: FaceAnalyser | None = None) -> web.Application:
    app = web.Application(middlewares=[observe_middleware, problem_middleware, auth_middleware],
                          client_max_size=JSON_BODY_LIMIT)
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
    for module in (ops, patients, visits, verification, digest):
        app.add_routes(module.routes)
    return app
