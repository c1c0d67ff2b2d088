"""Operations: liveness, readiness (database and face workers), Prometheus metrics, the OpenAPI document."""
from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from core.services.retention import purge_totals
from server.appkeys import CTX, FACE_POOL, METRICS
from server.auth import public
from server.openapi import DOCUMENT

routes = web.RouteTableDef()
DB_CHECK_TIMEOUT_S = 2.0


@routes.get("/healthz")
@public
async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _database_ok(request: web.Request) -> bool:
    try:
        async with asyncio.timeout(DB_CHECK_TIMEOUT_S):
            await request.app[CTX].uow.ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not ready"; the reason is not the caller's business
        return False


@routes.get("/readyz")
@public
async def readyz(request: web.Request) -> web.Response:
    database = await _database_ok(request)
    faces = request.app[FACE_POOL].ready
    return web.json_response({"status": "ready" if database and faces else "unready",
                              "database": "ok" if database else "unreachable",
                              "face_workers": "ready" if faces else "starting"},
                             status=200 if database and faces else 503)


@routes.get("/metrics")
@public
async def metrics(request: web.Request) -> web.Response:
    found = request.app[METRICS]
    # the purge's totals live in the database; one that cannot answer leaves the last ones read
    with contextlib.suppress(Exception):
        async with asyncio.timeout(DB_CHECK_TIMEOUT_S):
            found.purges.totals = await purge_totals(request.app[CTX])
    return web.Response(body=found.render(), headers={"Content-Type": found.content_type})


@routes.get("/api/v1/openapi.json")
@public
async def openapi(_request: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)
