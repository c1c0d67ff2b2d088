"""The clinic admins' daily digest as data (JSON) and as a spreadsheet (CSV), per clinic and Almaty day."""
from __future__ import annotations

import dataclasses
import datetime as dt

from aiohttp import web

from core.services import digest
from core.services.api_keys import Scope
from server.appkeys import CTX
from server.auth import principal, requires
from server.bodies import query_date

API = "/api/v1"
routes = web.RouteTableDef()


def _plain(value: object) -> object:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def digest_json(found: digest.Digest) -> dict[str, object]:
    return {"clinic_id": found.clinic_id, "clinic_name": found.clinic_name, "date": found.day.isoformat(),
            "all_confirmed": found.all_confirmed, "totals": found.totals,
            "per_doctor": [_plain(dataclasses.asdict(d)) for d in found.per_doctor],
            "flagged": [_plain(dataclasses.asdict(r)) for r in found.flagged],
            "visits": [_plain(dataclasses.asdict(r)) for r in found.rows],
            "enrolment_disputes": [_plain(dataclasses.asdict(d)) for d in found.enrolment_disputes]}


async def _digest(request: web.Request) -> digest.Digest:
    ctx = request.app[CTX]
    return await digest.build_digest(ctx, principal(request).clinic_id, query_date(request, "date", ctx.clock.now()))


@routes.get(API + "/digest")
@requires(Scope.ADMIN)
async def get_digest(request: web.Request) -> web.Response:
    return web.json_response(digest_json(await _digest(request)))


@routes.get(API + "/digest.csv")
@requires(Scope.ADMIN)
async def get_digest_csv(request: web.Request) -> web.Response:
    """UTF-8 with a byte-order mark, so Excel shows Kazakh and Russian names correctly."""
    found = await _digest(request)
    name = f"rastau-digest-clinic{found.clinic_id}-{found.day.isoformat()}.csv"
    return web.Response(text="\ufeff" + found.to_csv(), content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})
