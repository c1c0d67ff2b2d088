"""Visits: create (honouring Idempotency-Key), list one local day, read one with its events, cancel.

A key bound to a doctor sees and creates only that doctor's visits; anyone else's answer 404.
"""
from __future__ import annotations

import datetime as dt
import json
from typing import Literal

from aiohttp import web
from pydantic import AwareDatetime, Field, field_validator

from core.clock import ALMATY, local_day_bounds
from core.errors import ConcurrentWrite
from core.model import EVIDENCE_STRENGTH, Visit, VisitEvent, VisitMode, VisitState
from core.services import idempotency, visits
from core.services.access import check_doctor
from core.services.api_keys import Scope
from server.appkeys import CTX
from server.auth import caller, principal, requires
from server.bodies import MAX_ID, YEARS, Body, JsonInt, id_segment, path_id, query_date, query_int, read_json
from server.problems import Problem

API = "/api/v1"
VISIT = API + "/visits/" + id_segment("visit_id")
routes = web.RouteTableDef()


class VisitIn(Body):
    doctor_id: JsonInt = Field(ge=1, le=MAX_ID)
    patient_id: JsonInt = Field(ge=1, le=MAX_ID)
    start: AwareDatetime = Field(description="with a UTC offset, e.g. 2026-11-25T09:00:00+05:00; "
                                             f"years {YEARS.start}-{YEARS.stop - 1}")
    duration_minutes: JsonInt = Field(ge=1, le=720)
    mode: Literal["in_person", "online"]
    service_code: str = Field(min_length=1, max_length=64)

    @field_validator("start")
    @classmethod
    def _plausible_year(cls, value: dt.datetime) -> dt.datetime:
        if value.year not in YEARS:
            raise ValueError(f"the year must be {YEARS.start}-{YEARS.stop - 1}")
        return value


class CancelIn(Body):
    reason: str | None = Field(default=None, max_length=1000)


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def visit_json(visit: Visit) -> dict[str, object]:
    return {"id": visit.id, "doctor_id": visit.doctor_id, "patient_id": visit.patient_id,
            "start": _iso(visit.start), "start_local": visit.start.astimezone(ALMATY).isoformat(),
            "duration_minutes": int(visit.duration.total_seconds() // 60), "mode": visit.mode.value,
            "service_code": visit.service_code, "state": visit.state.value,
            "verification_methods": ["code"] if visit.mode is VisitMode.ONLINE else ["face_live", "face", "code"],
            "registered_at": _iso(visit.registered_at), "registered_late": visit.registered_late,
            "verified_by": visit.verified_by.value if visit.verified_by else None,
            "evidence_strength": EVIDENCE_STRENGTH[visit.verified_by] if visit.verified_by else None,
            "verified_at": _iso(visit.verified_at), "verified_enrolment_id": visit.verified_enrolment_id,
            "enrolled_at": _iso(visit.enrolled_at), "fresh_reference": visit.fresh_reference,
            "patient_answer": {"answer": visit.answer.value, "answered_at": _iso(visit.answered_at or
                                                                             visit.attended_claim_at),
                               "dispute_reason": visit.dispute_reason}}


def event_json(event: VisitEvent) -> dict[str, object]:
    return {"at": _iso(event.at), "step": event.step,
            "from_state": event.from_state.value if event.from_state else None, "to_state": event.to_state.value,
            "actor": getattr(event.actor, "value", event.actor), "method": event.method, "detail": event.detail}


def _created(visit: Visit) -> tuple[int, str]:
    return 201, json.dumps(visit_json(visit), ensure_ascii=False)


def _stored(response: idempotency.StoredResponse, visit_id: int | None = None,
            replayed: bool = False) -> web.Response:
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    if visit_id is None:
        visit_id = json.loads(response.body)["id"]
    headers["Location"] = f"{API}/visits/{visit_id}"
    return web.Response(status=response.status, text=response.body, content_type="application/json",
                        headers=headers)


@routes.post(API + "/visits")
@requires(Scope.CLINIC_SYSTEM)
async def create_visit(request: web.Request) -> web.Response:
    ctx, who = request.app[CTX], principal(request)
    body = await read_json(request, VisitIn)
    check_doctor(caller(request), body.doctor_id)  # before a replay, which would show another doctor's visit
    key = request.headers.get("Idempotency-Key")
    write = None
    if key is not None:
        request_hash = idempotency.fingerprint(body.model_dump(mode="json"))
        earlier = await idempotency.replay(ctx, who.clinic_id, idempotency.check_key(key), request_hash)
        if earlier is not None:
            return _stored(earlier, replayed=True)
        write = idempotency.IdempotentWrite(who.clinic_id, key, request_hash, _created)
    try:
        visit = await visits.register_visit(
            ctx, clinic_id=who.clinic_id, doctor_id=body.doctor_id, patient_id=body.patient_id, start=body.start,
            duration=dt.timedelta(minutes=body.duration_minutes), mode=body.mode, service_code=body.service_code,
            idempotency=write, caller=caller(request))
    except ConcurrentWrite:
        if write is None:
            raise
        earlier = await idempotency.replay(ctx, who.clinic_id, write.key, write.request_hash)  # a concurrent twin won
        if earlier is None:
            raise
        return _stored(earlier, replayed=True)
    if write is not None:
        assert write.response is not None, "register_visit stored it in its transaction"
        return _stored(write.response, visit.id)
    status, text = _created(visit)
    return web.Response(status=status, text=text, content_type="application/json",
                        headers={"Location": f"{API}/visits/{visit.id}"})


@routes.get(API + "/visits")
@requires(Scope.CLINIC_SYSTEM, Scope.ADMIN)
async def list_visits(request: web.Request) -> web.Response:
    ctx, who = request.app[CTX], principal(request)
    day = query_date(request, "date", ctx.clock.now())
    doctor_id = query_int(request, "doctor_id", low=1)
    status = request.query.get("status")
    if status is not None and status not in {s.value for s in VisitState}:
        raise Problem(422, "invalid_query", "query parameter 'status' must be one of "
                      + ", ".join(s.value for s in VisitState), field="status")
    start, end = local_day_bounds(day, ALMATY)
    found = await visits.list_visits(ctx, who.clinic_id, start_from=start, start_to=end, doctor_id=doctor_id,
                                     state=VisitState(status) if status else None,
                                     limit=query_int(request, "limit", default=200, low=1, high=500),
                                     offset=query_int(request, "offset", default=0), caller=caller(request))
    return web.json_response({"date": day.isoformat(), "visits": [visit_json(v) for v in found]})


@routes.get(VISIT)
@requires(Scope.CLINIC_SYSTEM, Scope.ADMIN, Scope.WEBCAM)
async def get_visit(request: web.Request) -> web.Response:
    ctx, who = request.app[CTX], principal(request)
    visit_id = path_id(request, "visit_id", "visit")
    view = await visits.get_visit(ctx, who.clinic_id, visit_id, caller=caller(request))
    return web.json_response({**visit_json(view.visit), "events": [event_json(e) for e in view.events]})


@routes.post(VISIT + "/cancel")
@requires(Scope.CLINIC_SYSTEM)
async def cancel_visit(request: web.Request) -> web.Response:
    ctx, who = request.app[CTX], principal(request)
    visit_id = path_id(request, "visit_id", "visit")
    body = await read_json(request, CancelIn) if request.can_read_body else CancelIn()
    visit = await visits.cancel_visit(ctx, who.clinic_id, visit_id, body.reason, caller=caller(request))
    return web.json_response(visit_json(visit))
