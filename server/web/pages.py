"""The day page (today and any day), its CSV, and a visit's timeline. Views parse the query, call the services with
the signed-in user, and render; the services decide which clinic the user may read (core.services.web_day)."""
from __future__ import annotations

import datetime as dt
import io
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from core import csvfile
from core.clock import to_local
from core.errors import InvalidValue
from core.model import VisitMode, VisitState
from core.services import web_day
from core.services.web_day import DayFilters, DayPage
from server.appkeys import CTX
from server.web.app import PREFIX, render, web_user
from server.web.i18n import N_, translate
from server.web.labels import ANSWER, METHOD, MODE, STATE, STEP

routes = web.RouteTableDef()


def _int(query: MultiMapping[str], name: str) -> int | None:
    value = query.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit() or len(value) > 12:
        raise InvalidValue(f"{name} must be a number")
    return int(value)


def _day(query: MultiMapping[str], today: dt.date) -> dt.date:
    value = query.get("day", "").strip()
    if not value:
        return today
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidValue("day must be a date like 2026-11-29") from exc


def _filters(query: MultiMapping[str]) -> DayFilters:
    mode, state = query.get("mode", "").strip(), query.get("state", "").strip()
    try:
        return DayFilters(doctor_id=_int(query, "doctor"), mode=VisitMode(mode) if mode else None,
                          state=VisitState(state) if state else None)
    except ValueError as exc:
        raise InvalidValue("mode or state is not one of the listed values") from exc


async def _day_page(request: web.Request, *, export: bool = False) -> DayPage:
    ctx = request.config_dict[CTX]
    today = to_local(ctx.clock.now()).date()
    return await web_day.day_page(ctx, web_user(request), _int(request.query, "clinic"), _day(request.query, today),
                                  _filters(request.query), export=export)


def _query_of(page: DayPage) -> dict[str, str]:
    """The page's query, for the links that keep it (CSV, the other days)."""
    query = {"clinic": str(page.clinic.id), "day": page.day.isoformat()}
    f = page.filters
    query.update({k: v for k, v in (("doctor", str(f.doctor_id) if f.doctor_id else ""),
                                    ("mode", f.mode.value if f.mode else ""),
                                    ("state", f.state.value if f.state else "")) if v})
    return query


@routes.get("/", allow_head=False)
async def home(_request: web.Request) -> web.Response:
    raise web.HTTPSeeOther(PREFIX + "/day")


@routes.get("/day", allow_head=False, name="day")
async def day(request: web.Request) -> web.Response:
    page = await _day_page(request)
    query = _query_of(page)
    return render("day.html", request, {
        "page": page, "clinics": page.clinics, "query": query,
        "csv_url": request.app.router["day_csv"].url_for().with_query(query),
        "prev_url": request.app.router["day"].url_for().with_query(
            {**query, "day": (page.day - dt.timedelta(days=1)).isoformat()}),
        "next_url": request.app.router["day"].url_for().with_query(
            {**query, "day": (page.day + dt.timedelta(days=1)).isoformat()}),
        "modes": MODE, "states": STATE, "methods": METHOD, "answers": ANSWER})


CSV_COLUMNS = (N_("Visit"), N_("Time"), N_("Doctor"), N_("Patient"), N_("Mode"), N_("Service"), N_("State"),
               N_("Verified by"), N_("Verified at"), N_("Registered at"), N_("Registered late"),
               N_("Patient's answer"), N_("Answered at"))


@routes.get("/day.csv", allow_head=False, name="day_csv")
async def day_csv(request: web.Request) -> web.Response:
    page = await _day_page(request, export=True)
    language = web_user(request).language
    out = io.StringIO()
    writer = csvfile.writer(out)  # names come from clinic systems: formulas stay text
    writer.writerow([translate(language, c) for c in CSV_COLUMNS])
    yes, no = translate(language, N_("yes")), translate(language, N_("no"))

    def local(moment: dt.datetime | None) -> str:
        return "" if moment is None else to_local(moment).strftime("%Y-%m-%d %H:%M:%S")

    for v in page.visits:
        writer.writerow([v.id, local(v.start), v.doctor_name, v.patient_name, translate(language, MODE[v.mode]),
                         v.service_code, translate(language, STATE[v.state]),
                         translate(language, METHOD[v.verified_by]) if v.verified_by else "", local(v.verified_at),
                         local(v.registered_at), yes if v.registered_late else no,
                         translate(language, ANSWER[v.answer]), local(v.answered_at)])
    name = f"rastau-day-{page.clinic.id}-{page.day.isoformat()}.csv"
    return web.Response(body=out.getvalue().encode("utf-8-sig"), content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})


@routes.get(r"/visits/{visit_id:\d{1,12}}", allow_head=False, name="visit")
async def visit(request: web.Request) -> web.Response:
    ctx = request.config_dict[CTX]
    found = await web_day.timeline(ctx, web_user(request), _int(request.query, "clinic"),
                                   int(request.match_info["visit_id"]))
    context: dict[str, Any] = {"t": found, "steps": STEP, "modes": MODE, "states": STATE, "methods": METHOD,
                               "answers": ANSWER,
                               "back_url": request.app.router["day"].url_for().with_query(
                                   {"clinic": str(found.clinic.id),
                                    "day": to_local(found.visit.start).date().isoformat()})}
    return render("visit.html", request, context)
