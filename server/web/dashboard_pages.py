"""The dashboard's disputes queue (with the review form), a clinic's doctors, a doctor's scorecard with its 30-day
chart, and the auditor's clinics ranked by red flags; each table also as CSV. Views parse, call
core.services.dashboard with the signed-in user, and render; the services decide what the user may read."""
from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterable, Sequence
from typing import Any

from aiohttp import web
from markupsafe import Markup
from multidict import MultiMapping

from core import csvfile
from core.clock import to_local
from core.errors import InvalidValue, NotFound
from core.model import Language, PatientAnswer, VerificationMethod
from core.services import dashboard, web_day
from core.services.dashboard import (
    ANSWERS,
    METHODS,
    DisputeKind,
    Overview,
    ReviewOutcome,
    Scorecard,
    Viewer,
)
from core.services.flags import Flag, FlagKind
from server.appkeys import CTX
from server.web.app import render, web_user
from server.web.charts import ChartText, stacked_days_svg
from server.web.i18n import N_, translate
from server.web.labels import ANSWER, METHOD

routes = web.RouteTableDef()

OUTCOME = {ReviewOutcome.UPHELD: N_("the patient is right"), ReviewOutcome.REJECTED: N_("the patient was there"),
           ReviewOutcome.NEEDS_FOLLOW_UP: N_("needs follow-up")}
DISPUTE_KIND = {DisputeKind.VISIT: N_("I was not at this visit"),
                DisputeKind.CHANGE: N_("This change was not made by me")}
CHANGE_KIND = {"face_enrolled": N_("face enrolled"), "face_replaced": N_("face replaced"),
               "face_revoked": N_("face removed"), "phone_changed": N_("phone changed"),
               "consent_recorded": N_("consent recorded"), "consent_withdrawn": N_("consent withdrawn")}
REVIEWER = {"admin": N_("clinic admin"), "auditor": N_("auditor")}
# The chart's and the days table's parts (core.services.dashboard.METHODS and ANSWERS)
PART = {"face_live": N_("live camera check"), "face": N_("photo"), "code": N_("one-time code"),
        "unverified": N_("no evidence"), "scheduled": N_("still waiting"), "confirmed": N_("was there"),
        "claimed": N_("says they were there"), "disputed": N_("was not there"), "no_answer": N_("no answer")}
FLAG_NAME = {
    FlagKind.DAY_VOLUME: N_("more visits in one day than a day holds"),
    FlagKind.CLOSE_VISITS: N_("visits starting too soon one after another"),
    FlagKind.TWO_CLINICS: N_("the same doctor in two clinics at the same time"),
    FlagKind.DOCTOR_CODE_SHARE: N_("a doctor verifies by code instead of face far more than the clinic"),
    FlagKind.CLINIC_CODE_SHARE: N_("the clinic verifies by code instead of face far more than usual"),
    FlagKind.UNVERIFIED_SHARE: N_("many visits with no evidence at all"),
    FlagKind.DISPUTED_SHARE: N_("many patients say they were not at the visit"),
    FlagKind.NO_ANSWER_SHARE: N_("most patients never answered whether they were there"),
    FlagKind.REGISTERED_LATE: N_("visits registered after their time had passed"),
    FlagKind.FACE_REPLACEMENTS: N_("many patients' face photos replaced"),
    FlagKind.ENROLMENT_DISPUTES: N_("patients dispute changes to their face, phone or consent"),
    FlagKind.SHARED_PHONE: N_("many patients registered with one phone number"),
    FlagKind.CODE_CAP_HOURS: N_("wrong codes at the hourly cap hour after hour"),
    FlagKind.FACE_CAP_HOURS: N_("failed face checks at the hourly cap hour after hour"),
    FlagKind.SERVICE_MISFIT: N_("a service billed for a patient of the wrong sex or age"),
    FlagKind.AFTER_DEATH: N_("visits billed after the patient's death"),
}
SHARE_KINDS = {FlagKind.DOCTOR_CODE_SHARE, FlagKind.CLINIC_CODE_SHARE, FlagKind.UNVERIFIED_SHARE,
               FlagKind.DISPUTED_SHARE, FlagKind.NO_ANSWER_SHARE}
# What a refused review says (the service's InvalidValue names the field; the page says it in the user's language)
REVIEW_ERRORS = {"outcome": N_("Choose one of the listed outcomes."),
                 "characters long": N_("The note is too long: at most 2,000 characters."),
                 "control characters": N_("The note holds characters that are not text.")}


def figure(flag: Flag, number: float) -> str:
    if flag.kind in SHARE_KINDS:
        return f"{number * 100:.0f}%"
    return str(int(number)) if float(number).is_integer() else f"{number:.2f}"


def _int(query: MultiMapping[str], name: str) -> int | None:
    value = query.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit() or len(value) > 12 or int(value) > dashboard.MAX_ID:
        raise InvalidValue(f"{name} must be a number")
    return int(value)


def _id(request: web.Request, name: str) -> int:
    """A record's id from the path: one beyond what the database holds is a record that does not exist."""
    value = int(request.match_info[name])
    if value > dashboard.MAX_ID:
        raise NotFound(f"{name} {value} not found")
    return value


def _last_day(request: web.Request) -> dt.date:
    value = request.query.get("day", "").strip()
    if not value:
        return to_local(request.config_dict[CTX].clock.now()).date()
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidValue("day must be a date like 2026-11-29") from exc


def _csv(name: str, header: Sequence[str], rows: Iterable[Sequence[Any]], language: Language) -> web.Response:
    out = io.StringIO()
    writer = csvfile.writer(out)  # names and notes come from clinics and patients: formulas stay text
    writer.writerow([translate(language, h) for h in header])
    writer.writerows(rows)
    return web.Response(body=out.getvalue().encode("utf-8-sig"), content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _local(moment: dt.datetime | None) -> str:
    return "" if moment is None else to_local(moment).strftime("%Y-%m-%d %H:%M")


def _labels() -> dict[str, Any]:
    return {"outcomes": OUTCOME, "dispute_kinds": DISPUTE_KIND, "change_kinds": CHANGE_KIND, "reviewers": REVIEWER,
            "flag_names": FLAG_NAME, "parts": PART, "methods": METHOD, "answers": ANSWER, "figure": figure,
            "method_keys": METHODS, "answer_keys": ANSWERS}


# --- the disputes queue -------------------------------------------------------------------------------------------

def _queue_query(request: web.Request) -> dict[str, str]:
    """The queue's own filters (clinic, not reviewed only), kept by its links and its CSV."""
    clinic = _int(request.query, "clinic")
    return {**({"clinic": str(clinic)} if clinic else {}), **({"open": "1"} if request.query.get("open") else {})}


async def _queue(request: web.Request, *, limit: int = dashboard.QUEUE_PAGE) -> tuple[Viewer, list[dashboard.Dispute]]:
    viewer = Viewer.of(web_user(request))
    after = request.query.get("after", "").strip() or None
    return viewer, await dashboard.disputes_queue(request.config_dict[CTX], viewer, _int(request.query, "clinic"),
                                                  after=after, unreviewed_only=bool(request.query.get("open")),
                                                  limit=limit)


async def _disputes_page(request: web.Request, *, error: str | None = None, status: int = 200) -> web.Response:
    viewer, queue = await _queue(request)
    counts = await dashboard.queue_counts(request.config_dict[CTX], viewer, _int(request.query, "clinic"))
    query, router = _queue_query(request), request.app.router
    here = router["disputes"].url_for()
    return render("dd_disputes.html", request, {
        "queue": queue, "viewer": viewer, "error": error, "counts": counts, "only_open": "open" in query,
        "all_url": here.with_query({k: v for k, v in query.items() if k != "open"}),
        "open_url": here.with_query({**query, "open": "1"}),
        "first_url": here.with_query(query) if request.query.get("after") else None,
        "next_url": here.with_query({**query, "after": queue[-1].cursor})
        if len(queue) == dashboard.QUEUE_PAGE else None,
        "csv_url": router["disputes_csv"].url_for().with_query(query), **_labels()}, status=status)


@routes.get("/disputes", allow_head=False, name="disputes")
async def disputes(request: web.Request) -> web.Response:
    return await _disputes_page(request)


@routes.post(r"/disputes/{kind:visit|change}/{dispute_id:\d{1,12}}/review", name="review")
async def review(request: web.Request) -> web.Response:
    form = await request.post()
    viewer = Viewer.of(web_user(request))
    kind, dispute_id = request.match_info["kind"], _id(request, "dispute_id")
    try:
        await dashboard.review_dispute(request.config_dict[CTX], viewer, kind, dispute_id,
                                       str(form.get("outcome", "")), str(form.get("note", "")))
    except InvalidValue as exc:
        said = next((msgid for key, msgid in REVIEW_ERRORS.items() if key in str(exc)),
                    N_("The review was not recorded."))
        return await _disputes_page(request, error=said, status=400)
    back = request.app.router["disputes"].url_for().with_query(_queue_query(request))
    raise web.HTTPSeeOther(f"{back}#dispute-{kind}-{dispute_id}")


QUEUE_HEADER = (N_("Dispute"), N_("Number"), N_("Clinic"), N_("Patient"), N_("Disputed at"), N_("What"),
                N_("When"), N_("Doctor or made by"), N_("Verified by"), N_("Patient's words"), N_("Reviews"),
                N_("The clinic's outcome"), N_("The clinic's note"), N_("The auditor's outcome"),
                N_("The auditor's note"))


@routes.get("/disputes.csv", allow_head=False, name="disputes_csv")
async def disputes_csv(request: web.Request) -> web.Response:
    _, queue = await _queue(request, limit=500)  # the CSV: the oldest 500 (a later one: ?after=the 500th's cursor)
    lang = web_user(request).language

    def tr(msgid: str) -> str:
        return translate(lang, msgid)

    rows = []
    for d in queue:
        what = d.what if d.kind is DisputeKind.VISIT else tr(CHANGE_KIND.get(d.what, d.what))
        evidence = tr(METHOD[VerificationMethod(d.evidence)]) if d.evidence else ""
        rows.append([tr(DISPUTE_KIND[d.kind]), d.id, d.clinic_name, d.patient, _local(d.disputed_at), what,
                     _local(d.happened_at), d.by, evidence, d.reason, len(d.reviews),
                     *(cell for r in (d.latest("admin"), d.latest("auditor"))
                       for cell in ((tr(OUTCOME[r.outcome]), r.note) if r else ("", "")))])
    return _csv("rastau-disputes.csv", QUEUE_HEADER, rows, lang)


# --- a clinic's doctors and a doctor's scorecard ------------------------------------------------------------------

async def _doctors(request: web.Request) -> tuple[web_day.ClinicChoice, Overview]:
    ctx, user = request.config_dict[CTX], web_user(request)
    clinic = await web_day.clinic_for(ctx, user, _int(request.query, "clinic"))
    return clinic, await dashboard.clinic_doctors(ctx, Viewer.of(user), clinic.id, _last_day(request))


@routes.get("/doctors", allow_head=False, name="doctors")
async def doctors(request: web.Request) -> web.Response:
    clinic, overview = await _doctors(request)
    clinics = await web_day.clinics_of(request.config_dict[CTX], web_user(request))
    query = {"clinic": str(clinic.id), "day": overview.last_day.isoformat()}
    return render("dd_doctors.html", request, {
        "clinic": clinic, "clinics": clinics, "o": overview, "query": query,
        "csv_url": request.app.router["doctors_csv"].url_for().with_query(query), **_labels()})


TOTALS_HEADER = (N_("Number"), N_("Name"), N_("Visits"), N_("By code"), N_("No evidence"), N_("Disputed"),
                 N_("Red flags"), N_("Visits behind the flags"), N_("Flags"))


@routes.get("/doctors.csv", allow_head=False, name="doctors_csv")
async def doctors_csv(request: web.Request) -> web.Response:
    clinic, overview = await _doctors(request)
    lang = web_user(request).language
    return _csv(f"rastau-doctors-{clinic.id}-{overview.last_day.isoformat()}.csv", TOTALS_HEADER,
                _totals_rows(overview, lang), lang)


def _totals_rows(overview: Overview, lang: Language, *, ranked: bool = False) -> list[list[Any]]:
    return [[*([r.rank] if ranked else []), r.id, r.name, r.visits, r.code, r.unverified, r.disputed, r.flags,
             r.flagged_visits, "; ".join(translate(lang, FLAG_NAME[k]) for k in r.kinds)] for r in overview.rows]


async def _scorecard(request: web.Request) -> Scorecard:
    return await dashboard.doctor_scorecard(request.config_dict[CTX], Viewer.of(web_user(request)),
                                            _id(request, "doctor_id"), _last_day(request))


def chart(card: Scorecard, lang: Language) -> Markup:
    def tr(msgid: str) -> str:
        return translate(lang, msgid)

    total = card.totals()
    period = f"{card.first_day:%d.%m}–{card.last_day:%d.%m.%Y}"
    desc = tr(N_("{visits} visits in {days} days: live camera check {face_live}, photo {face}, one-time code {code}, "
                 "no evidence {unverified}; the patients said they were there {confirmed}, were not there "
                 "{disputed}, gave no answer {no_answer}.")).format(
        visits=total.visits, days=len(card.days), face_live=total.face_live, face=total.face, code=total.code,
        unverified=total.unverified, confirmed=total.confirmed, disputed=total.disputed, no_answer=total.no_answer)
    text = ChartText(title=f"{card.doctor_name} · {period}", desc=desc, y_axis=tr(N_("visits")),
                     methods=tr(N_("Verified by")), answers=tr(N_("Patient's answer")),
                     labels={key: tr(msgid) for key, msgid in PART.items()},
                     empty=tr(N_("No visits in this period.")))
    # stacked_days_svg escapes every text it places (tests/server/test_web_charts.py feeds it markup and reads it back)
    return Markup(stacked_days_svg(card.days, text, id_prefix=f"doctor-{card.doctor_id}"))  # nosec B704


@routes.get(r"/doctors/{doctor_id:\d{1,12}}", allow_head=False, name="scorecard")
async def scorecard(request: web.Request) -> web.Response:
    card = await _scorecard(request)
    lang = web_user(request).language
    query = {"day": card.last_day.isoformat()}
    router = request.app.router
    return render("dd_scorecard.html", request, {
        "card": card, "chart": chart(card, lang), "totals": card.totals(), "query": query,
        "prev_url": router["scorecard"].url_for(doctor_id=str(card.doctor_id)).with_query(
            {"day": (card.first_day - dt.timedelta(days=1)).isoformat()}),
        "days_csv": router["scorecard_csv"].url_for(doctor_id=str(card.doctor_id)).with_query(query),
        "flags_csv": router["scorecard_flags_csv"].url_for(doctor_id=str(card.doctor_id)).with_query(query),
        "back_url": router["doctors"].url_for().with_query({"clinic": str(card.clinic_id), **query}),
        "shown_answer": PatientAnswer, **_labels()})


DAYS_HEADER = (N_("Day"), N_("Visits"), *(PART[k] for k in METHODS), *(PART[k] for k in ANSWERS))


@routes.get(r"/doctors/{doctor_id:\d{1,12}}/days.csv", allow_head=False, name="scorecard_csv")
async def scorecard_csv(request: web.Request) -> web.Response:
    card = await _scorecard(request)
    rows = [[d.day.isoformat(), d.visits, *(getattr(d, k) for k in (*METHODS, *ANSWERS))] for d in card.days]
    return _csv(f"rastau-doctor-{card.doctor_id}-{card.last_day.isoformat()}.csv", DAYS_HEADER, rows,
                web_user(request).language)


FLAGS_HEADER = (N_("Red flag"), N_("Day"), N_("Measured"), N_("Flagged above"), N_("Visits"), N_("Visit numbers"))


@routes.get(r"/doctors/{doctor_id:\d{1,12}}/flags.csv", allow_head=False, name="scorecard_flags_csv")
async def scorecard_flags_csv(request: web.Request) -> web.Response:
    card = await _scorecard(request)
    lang = web_user(request).language
    rows = [[translate(lang, FLAG_NAME[f.flag.kind]), f.flag.day.isoformat() if f.flag.day else "",
             figure(f.flag, f.flag.value), figure(f.flag, f.flag.threshold), len(f.flag.visit_ids),
             " ".join(map(str, f.flag.visit_ids))] for f in card.flags]
    return _csv(f"rastau-doctor-{card.doctor_id}-flags-{card.last_day.isoformat()}.csv", FLAGS_HEADER, rows, lang)


# --- an auditor's clinics side by side ----------------------------------------------------------------------------

async def _ranking(request: web.Request) -> Overview:
    return await dashboard.clinics_ranking(request.config_dict[CTX], Viewer.of(web_user(request)),
                                           _last_day(request))


@routes.get("/clinics", allow_head=False, name="clinics")
async def clinics(request: web.Request) -> web.Response:
    if not web_user(request).is_auditor:
        raise web.HTTPSeeOther(str(request.app.router["doctors"].url_for()))
    ranking = await _ranking(request)
    query = {"day": ranking.last_day.isoformat()}
    return render("dd_clinics.html", request, {
        "o": ranking, "query": query, "csv_url": request.app.router["clinics_csv"].url_for().with_query(query),
        **_labels()})


RANKING_HEADER = (N_("Rank"), *TOTALS_HEADER)


@routes.get("/clinics.csv", allow_head=False, name="clinics_csv")
async def clinics_csv(request: web.Request) -> web.Response:
    if not web_user(request).is_auditor:
        raise web.HTTPSeeOther(str(request.app.router["doctors"].url_for()))
    ranking = await _ranking(request)
    lang = web_user(request).language
    return _csv(f"rastau-clinics-{ranking.last_day.isoformat()}.csv", RANKING_HEADER,
                _totals_rows(ranking, lang, ranked=True), lang)
