"""Reads that span tables: the digest, what a chat is linked to and may list. Services read through here and
write through the repositories, so no service builds a statement on the tables itself.

Each method answers rows (attribute access by column label); the service that asked turns them into its own
read model."""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Date,
    Float,
    Integer,
    Select,
    String,
    and_,
    bindparam,
    case,
    cast,
    distinct,
    func,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from core.db import tables as t
from core.db.repositories import ENROLLED_AT, FRESH, AnyRow
from core.model import OutboxKind, VerificationMethod, VisitMode, VisitState

_v, _d, _p, _c, _pc = t.visits, t.doctors, t.patients, t.clinics, t.patient_changes
_CANCELLED, _SCHEDULED = VisitState.CANCELLED.value, VisitState.SCHEDULED.value
_CONFIRMED, _DISPUTED = VisitState.PATIENT_CONFIRMED.value, VisitState.PATIENT_DISPUTED.value


def _count(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


_billed = _v.c.state != _CANCELLED
_unverified = and_(_billed, _v.c.verified_by.is_(None), _v.c.state != _SCHEDULED)
_disputed = _v.c.state == _DISPUTED
# The digest's statements are built once with bound parameters (clinic, start, end): a statement this size costs
# SQLAlchemy as much to build and key for its cache as the database spends answering it.
_DAY = and_(_v.c.clinic_id == bindparam("clinic"), _v.c.start_at >= bindparam("start"),
            _v.c.start_at < bindparam("end"))
_DISPUTED_IN_DAY = and_(_pc.c.clinic_id == bindparam("clinic"), _pc.c.disputed_at >= bindparam("start"),
                        _pc.c.disputed_at < bindparam("end"))
# Per doctor, everything the digest's totals need: the counting happens in the database, in one pass over the day;
# each row also carries the clinic's name and how many changes its patients disputed that day.
# --- issue 14: whether anyone can ask the patient "were you there?" on any channel ---------------------------------
# Telegram: a linked chat, not blocked, not stopped (core.services.chat.reachable_chat); WhatsApp (when on): a proven
# row not gone; SMS (when on): the registered phone, unless it failed for good at that number. As
# core.services.channels.patient_routes decides it for the sender; the caller says which channels are on.
_pch = t.patient_channels
_TELEGRAM_OK = and_(_p.c.chat_id.is_not(None), ~_p.c.chat_blocked,
                    ~select(t.chat_users.c.chat_id).where(and_(t.chat_users.c.chat_id == _p.c.chat_id,
                                                               t.chat_users.c.stopped)).exists())
_WHATSAPP_OK = and_(bindparam("whatsapp_on", False, type_=Boolean), select(_pch.c.patient_id).where(and_(
    _pch.c.patient_id == _p.c.id, _pch.c.channel == "whatsapp", _pch.c.gone_at.is_(None))).exists())
_SMS_OK = and_(bindparam("sms_on", False, type_=Boolean), ~select(_pch.c.patient_id).where(and_(
    _pch.c.patient_id == _p.c.id, _pch.c.channel == "sms", _pch.c.gone_at.is_not(None),
    _pch.c.address == _p.c.phone)).exists())
ANY_CHANNEL = or_(_TELEGRAM_OK, _WHATSAPP_OK, _SMS_OK)
# issue 14 (whatsapp): how far the visit's code got. "delivered": a channel that reports delivery (WhatsApp, SMS) said
# it arrived (or was read); "sent": it went out, arrival unknown (Telegram never says) or not yet reported; NULL: no
# code message went out.
_o = t.outbox
_CODE_ROWS = and_(_o.c.visit_id == _v.c.id, _o.c.kind == OutboxKind.VISIT_CODE.value)
CODE_DELIVERY = case(
    (select(_o.c.id).where(and_(_CODE_ROWS, _o.c.delivery_status.in_(["delivered", "read"]))).exists(), "delivered"),
    (select(_o.c.id).where(and_(_CODE_ROWS, _o.c.status == "sent")).exists(), "sent"),
    else_=None)
_UNANSWERED = and_(_billed, _v.c.state.not_in([_CONFIRMED, _DISPUTED]), _v.c.attended_claim_at.is_(None))


def channel_params(*, sms: bool, whatsapp: bool) -> dict[str, bool]:
    return {"sms_on": sms, "whatsapp_on": whatsapp}


_DIGEST_COUNTS = (
    select(_v.c.doctor_id, _d.c.full_name,
           _count(_billed).label("visits"),
           _count(and_(_billed, _v.c.verified_by == VerificationMethod.FACE.value)).label("face_verified"),
           _count(and_(_billed, _v.c.verified_by == VerificationMethod.CODE.value)).label("code_verified"),
           _count(and_(_billed, _v.c.verified_by == VerificationMethod.FACE_LIVE.value)).label("face_live_verified"),
           _count(_unverified).label("unverified"),
           _count(_v.c.state == _CONFIRMED).label("patient_confirmed"),
           _count(_disputed).label("disputed"),
           # core.model.patient_answer(...) is NONE, counted in SQL
           _count(_UNANSWERED).label("no_answer"),
           _count(and_(_UNANSWERED, ~ANY_CHANNEL)).label("no_channel"),  # issue 14: of those, nobody could ask
           _count(~_billed).label("cancelled"),
           _count(and_(_billed, ~ANY_CHANNEL)).label("unreachable"),
           _count(and_(_billed, _v.c.registered_late)).label("registered_late"),
           _count(and_(_billed, FRESH)).label("fresh_reference"),
           _c.c.name.label("clinic_name"),
           select(func.count()).select_from(_pc).where(_DISPUTED_IN_DAY).scalar_subquery().label("disputed_changes"))
    .join(_d, _d.c.id == _v.c.doctor_id).join(_p, _p.c.id == _v.c.patient_id).join(_c, _c.c.id == _v.c.clinic_id)
    .where(_DAY).group_by(_v.c.doctor_id, _d.c.full_name, _c.c.name))
_DIGEST_VISITS = (
    select(_v.c.id, _v.c.start_at, _v.c.doctor_id, _v.c.mode, _v.c.service_code, _v.c.state,
           _v.c.verified_by, _v.c.attended_claim_at, _v.c.dispute_reason,
           _d.c.full_name.label("doctor_name"), _p.c.full_name.label("patient_name"), _p.c.iin,
           _p.c.chat_id, _p.c.chat_blocked, _v.c.created_at, _v.c.registered_late, _v.c.verified_at,
           _v.c.verified_enrolment_id, ENROLLED_AT.label("enrolled_at"), FRESH.label("fresh_reference"),
           ANY_CHANNEL.label("reachable"), CODE_DELIVERY.label("code_delivery"))
    .join(_d, _d.c.id == _v.c.doctor_id).join(_p, _p.c.id == _v.c.patient_id).where(_DAY)
    .order_by(_v.c.start_at, _v.c.id))
_DIGEST_FLAGGED = _DIGEST_VISITS.where(or_(_unverified, _disputed, FRESH))
_DISPUTED_CHANGES = (select(_pc.c.id, _pc.c.kind, _pc.c.patient_id, _pc.c.actor, _pc.c.at, _pc.c.disputed_at,
                            _p.c.full_name, _p.c.iin)
                     .join(_p, _p.c.id == _pc.c.patient_id).where(_DISPUTED_IN_DAY)
                     .order_by(_pc.c.disputed_at, _pc.c.id))
# A visit as a chat lists it: with the names of its clinic, doctor and patient, and whether the patient is reachable.
_VISIT_LINES = (select(_v.c.id, _v.c.clinic_id, _v.c.doctor_id, _v.c.patient_id, _v.c.start_at, _v.c.mode,
                       _v.c.state, _v.c.verified_by, _v.c.answered_at, _v.c.attended_claim_at,
                       _c.c.name.label("clinic_name"), _d.c.full_name.label("doctor_name"),
                       _p.c.full_name.label("patient_name"), _p.c.chat_id, _p.c.chat_blocked)
                .join(_d, _d.c.id == _v.c.doctor_id).join(_p, _p.c.id == _v.c.patient_id)
                .join(_c, _c.c.id == _v.c.clinic_id))


# --- the auditors' evidence export (issue 12) -----------------------------------------------------------------------
# Whether a patient's chat reaches them, as core.services.chat.reachable_chat decides it (linked, not blocked, not
# stopped), in SQL: the export says "no channel" for a patient nobody could ask "were you there?".
_STOPPED_CHAT = select(t.chat_users.c.chat_id).where(and_(t.chat_users.c.chat_id == _p.c.chat_id,
                                                          t.chat_users.c.stopped)).exists()
REACHABLE = ANY_CHANNEL  # issue 14: any working channel, not only the chat
# A page of visits starting in [start, end), after the cursor (a visit id) in id order: a visit registered while an
# auditor pages through gets a higher id, so it lands on a later page instead of being skipped.
_EVIDENCE = (select(_v.c.id, _v.c.clinic_id, _c.c.name.label("clinic_name"), _v.c.doctor_id,
                    _d.c.full_name.label("doctor_name"), _v.c.patient_id, _p.c.iin, _v.c.mode, _v.c.service_code,
                    _v.c.start_at, _v.c.created_at, _v.c.registered_late, _v.c.state, _v.c.verified_by,
                    _v.c.verified_at, _v.c.attended_claim_at, FRESH.label("fresh_reference"),
                    REACHABLE.label("reachable"))
             .join(_d, _d.c.id == _v.c.doctor_id).join(_p, _p.c.id == _v.c.patient_id)
             .join(_c, _c.c.id == _v.c.clinic_id)
             .where(_v.c.start_at >= bindparam("start"), _v.c.start_at < bindparam("end"),
                    _v.c.id > bindparam("after"))
             .order_by(_v.c.id).limit(bindparam("limit")))
_EVIDENCE_OF_CLINICS = _EVIDENCE.where(_v.c.clinic_id.in_(bindparam("clinics", expanding=True)))


class Queries:
    def __init__(self, conn: AsyncConnection):
        self.conn = conn

    # --- the daily digest: one clinic, visits starting in [start, end) ----------------------------------------

    async def digest_counts(self, clinic_id: int, start: dt.datetime, end: dt.datetime, *, sms: bool = False,
                            whatsapp: bool = False) -> list[AnyRow]:
        """One row per doctor with a visit that day, carrying every count the digest's totals add up, and on each
        the clinic's name and how many changes its patients disputed that day (no row: no visit that day).
        ``sms``/``whatsapp``: the channels that are on, for who could be asked (issue 14)."""
        return list((await self.conn.execute(_DIGEST_COUNTS, {"clinic": clinic_id, "start": start, "end": end,
                                                              **channel_params(sms=sms, whatsapp=whatsapp)})).all())

    async def digest_visits(self, clinic_id: int, start: dt.datetime, end: dt.datetime, *,
                            flagged_only: bool = False, sms: bool = False, whatsapp: bool = False) -> list[AnyRow]:
        """The day's visits; ``flagged_only``: unverified, disputed, or verified against a fresh reference."""
        stmt = _DIGEST_FLAGGED if flagged_only else _DIGEST_VISITS
        return list((await self.conn.execute(stmt, {"clinic": clinic_id, "start": start, "end": end,
                                                    **channel_params(sms=sms, whatsapp=whatsapp)})).all())

    async def disputed_changes(self, clinic_id: int, start: dt.datetime, end: dt.datetime) -> list[AnyRow]:
        """Changes to the clinic's patients that the patients disputed in [start, end)."""
        return list((await self.conn.execute(_DISPUTED_CHANGES, {"clinic": clinic_id, "start": start,
                                                                 "end": end})).all())

    # --- chats ------------------------------------------------------------------------------------------------

    async def chat_user(self, chat_id: int) -> AnyRow | None:
        """The chat's own settings (language, stopped), or None for a chat that never chose or stopped."""
        return (await self.conn.execute(select(t.chat_users.c.language, t.chat_users.c.stopped)
                                        .where(t.chat_users.c.chat_id == chat_id))).first()

    async def clinic_names(self, clinic_ids: set[int]) -> dict[int, str]:
        if not clinic_ids:
            return {}
        rows = (await self.conn.execute(select(_c.c.id, _c.c.name).where(_c.c.id.in_(clinic_ids)))).all()
        return {r.id: r.name for r in rows}

    async def patient_visit_lines(self, patient_ids: list[int], since: dt.datetime,
                                  until: dt.datetime) -> list[AnyRow]:
        """The patients' visits starting in [since, until), newest first."""
        return list((await self.conn.execute(_VISIT_LINES.where(and_(
            _v.c.patient_id.in_(patient_ids), _v.c.start_at >= since, _v.c.start_at < until))
            .order_by(_v.c.start_at.desc(), _v.c.id.desc()))).all())

    async def patient_open_visit_lines(self, patient_ids: list[int], before: dt.datetime,
                                       limit: int = 200) -> list[AnyRow]:
        """The patients' visits starting before ``before`` that may still get an answer (scheduled, verified or
        unverified), newest first: what /visits adds beyond its last 30 days (chat-disputes, issue 17)."""
        open_states = [VisitState.SCHEDULED.value, VisitState.VERIFIED.value, VisitState.UNVERIFIED.value]
        return list((await self.conn.execute(_VISIT_LINES.where(and_(
            _v.c.patient_id.in_(patient_ids), _v.c.start_at < before, _v.c.state.in_(open_states)))
            .order_by(_v.c.start_at.desc(), _v.c.id.desc()).limit(limit))).all())

    async def online_scheduled_lines(self, doctor_ids: list[int], start: dt.datetime,
                                     end: dt.datetime) -> list[AnyRow]:
        """The doctors' online consultations starting in [start, end) that still wait for verification."""
        return list((await self.conn.execute(_VISIT_LINES.where(and_(
            _v.c.doctor_id.in_(doctor_ids), _v.c.mode == VisitMode.ONLINE.value, _v.c.state == _SCHEDULED,
            _v.c.start_at >= start, _v.c.start_at < end)).order_by(_v.c.start_at, _v.c.id))).all())

    async def visit_line(self, visit_id: int) -> AnyRow | None:
        return (await self.conn.execute(_VISIT_LINES.where(_v.c.id == visit_id))).first()

    async def sent_code_messages(self, visit_id: int) -> list[AnyRow]:
        """The visit's code messages (id, chat_id, chat_message_id, sent_at, status, due_at), oldest first: the
        sent ones with the chat and message they are in, and those still queued (their code is not issued yet)."""
        o = t.outbox
        return list((await self.conn.execute(select(o.c.id, o.c.chat_id, o.c.chat_message_id, o.c.sent_at, o.c.status,
                                                    o.c.due_at)
                                             .where(and_(o.c.visit_id == visit_id,
                                                         o.c.kind == OutboxKind.VISIT_CODE.value))
                                             .order_by(o.c.id))).all())

    # --- the auditors' evidence export --------------------------------------------------------------------------

    async def evidence_page(self, clinic_ids: frozenset[int] | None, start: dt.datetime, end: dt.datetime, *,
                            after: int, limit: int, sms: bool = False, whatsapp: bool = False) -> list[AnyRow]:
        """Up to ``limit`` visits of the clinics (None: every clinic) starting in [start, end) with an id above
        ``after``, in id order, each with its clinic, doctor, patient's IIN, evidence and whether the patient's chat
        reaches them."""
        params: dict[str, object] = {"start": start, "end": end, "after": after, "limit": limit,
                                     **channel_params(sms=sms, whatsapp=whatsapp)}
        if clinic_ids is None:
            return list((await self.conn.execute(_EVIDENCE, params)).all())
        return list((await self.conn.execute(_EVIDENCE_OF_CLINICS, {**params, "clinics": sorted(clinic_ids)})).all())


# --- red flags (issue 12): one statement per rule, on SQLite and PostgreSQL ---------------------------------------
# Each answers the groups (doctor-day, doctor, clinic) over their rule's threshold, with the measured value and the
# ids of the visits that raised it as one comma-separated text (group_concat / string_agg), so a rule is one round
# trip however many flags it finds. core.services.flags turns the rows into flags and says what each means.
# Thresholds are bound parameters; the period is [start, end) in UTC over visits' start_at.

_LOCAL_OFFSET = 5  # hours: Asia/Almaty (core.clock.ALMATY) is UTC+5 all year since 2024-03-01; days are counted so


class _LocalDay(FunctionElement[dt.date]):
    """The Asia/Almaty calendar day of a UTC moment (a date on both engines)."""
    type = Date()
    inherit_cache = True
    name = "local_day"


@compiles(_LocalDay, "sqlite")
def _local_day_sqlite(element: _LocalDay, compiler: SQLCompiler, **kw: Any) -> str:
    return f"date({compiler.process(element.clauses, **kw)}, '+{_LOCAL_OFFSET} hours')"


@compiles(_LocalDay, "postgresql")
def _local_day_postgresql(element: _LocalDay, compiler: SQLCompiler, **kw: Any) -> str:
    moment = compiler.process(element.clauses, **kw)
    return f"CAST(({moment} AT TIME ZONE 'UTC') + INTERVAL '{_LOCAL_OFFSET} hours' AS DATE)"


class _LocalYmd(FunctionElement[int]):
    """The Asia/Almaty day of a UTC moment as the number YYYYMMDD: whole years between two such numbers are their
    difference divided by 10,000, on both engines."""
    type = Integer()
    inherit_cache = True
    name = "local_ymd"


@compiles(_LocalYmd, "sqlite")
def _local_ymd_sqlite(element: _LocalYmd, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(strftime('%Y%m%d', {compiler.process(element.clauses, **kw)}, '+{_LOCAL_OFFSET} hours') AS INTEGER)"


@compiles(_LocalYmd, "postgresql")
def _local_ymd_postgresql(element: _LocalYmd, compiler: SQLCompiler, **kw: Any) -> str:
    moment = compiler.process(element.clauses, **kw)
    return f"CAST(to_char(({moment} AT TIME ZONE 'UTC') + INTERVAL '{_LOCAL_OFFSET} hours', 'YYYYMMDD') AS INTEGER)"


class _SecondsBetween(FunctionElement[float]):
    """later - earlier, in seconds."""
    type = Float()
    inherit_cache = True
    name = "seconds_between"


@compiles(_SecondsBetween, "sqlite")
def _seconds_sqlite(element: _SecondsBetween, compiler: SQLCompiler, **kw: Any) -> str:
    later, earlier = (compiler.process(c, **kw) for c in element.clauses)
    return f"round((julianday({later}) - julianday({earlier})) * 86400.0, 3)"  # to the millisecond: julianday's
    # floating point makes ten minutes 599.99999 seconds


@compiles(_SecondsBetween, "postgresql")
def _seconds_postgresql(element: _SecondsBetween, compiler: SQLCompiler, **kw: Any) -> str:
    later, earlier = (compiler.process(c, **kw) for c in element.clauses)
    return f"EXTRACT(EPOCH FROM ({later} - {earlier}))"


class _IdList(FunctionElement[str]):
    """The group's ids (NULLs left out) as one comma-separated text, in no particular order."""
    type = String()
    inherit_cache = True
    name = "id_list"


@compiles(_IdList, "sqlite")
def _id_list_sqlite(element: _IdList, compiler: SQLCompiler, **kw: Any) -> str:
    return f"group_concat({compiler.process(element.clauses, **kw)})"


@compiles(_IdList, "postgresql")
def _id_list_postgresql(element: _IdList, compiler: SQLCompiler, **kw: Any) -> str:
    return f"string_agg(CAST({compiler.process(element.clauses, **kw)} AS TEXT), ',')"


_FLAG_PERIOD = and_(_v.c.start_at >= bindparam("start"), _v.c.start_at < bindparam("end"))
_FLAG_BILLED = and_(_billed, _FLAG_PERIOD)
_visit_day = _LocalDay(_v.c.start_at)
_IIN_CENTURY_DIGIT = cast(func.substr(_p.c.iin, 7, 1), Integer)  # core.iin: 1-6; odd male, even female
_IIN_BIRTH_YMD = (cast(func.substr(_p.c.iin, 1, 6), Integer)
                  + (1800 + 100 * ((_IIN_CENTURY_DIGIT - 1) // 2)) * 10000)
_AGE_AT_VISIT = (_LocalYmd(_v.c.start_at) - _IIN_BIRTH_YMD) // 10000  # whole years on the visit's local day
_IS_MALE = _IIN_CENTURY_DIGIT % 2 == 1
_sr, _dx = t.service_rules, t.deaths


def _scoped[S: Select[Any]](stmt: S, clinic: ColumnElement[Any], doctor: ColumnElement[Any] | None,
            clinic_id: int | None, doctor_id: int | None) -> S:
    if clinic_id is not None:
        stmt = stmt.where(clinic == clinic_id)
    if doctor_id is not None and doctor is not None:
        stmt = stmt.where(doctor == doctor_id)
    return stmt


class FlagQueries:
    """The red-flag rules' reads. Each takes the period [start, end) (UTC), an optional clinic and doctor, and the
    rule's thresholds, and answers one row per group over them."""

    def __init__(self, conn: AsyncConnection):
        self.conn = conn

    async def _rows(self, stmt: Any, params: dict[str, Any]) -> list[AnyRow]:
        return list((await self.conn.execute(stmt, params)).all())

    async def day_volume(self, start: dt.datetime, end: dt.datetime, clinic_id: int | None, doctor_id: int | None,
                         *, above: int) -> list[AnyRow]:
        """Doctor-days with more than ``above`` billed visits."""
        stmt = (select(_v.c.clinic_id, _v.c.doctor_id, _visit_day.label("day"), func.count().label("value"),
                       _IdList(_v.c.id).label("visit_ids"))
                .where(_FLAG_BILLED).group_by(_v.c.clinic_id, _v.c.doctor_id, _visit_day)
                .having(func.count() > bindparam("above")))
        return await self._rows(_scoped(stmt, _v.c.clinic_id, _v.c.doctor_id, clinic_id, doctor_id),
                                {"start": start, "end": end, "above": above})

    async def close_visits(self, start: dt.datetime, end: dt.datetime, clinic_id: int | None,
                           doctor_id: int | None, *, gap_seconds: int, at_least: int) -> list[AnyRow]:
        """Doctor-days with at least ``at_least`` billed visits starting less than ``gap_seconds`` after the
        doctor's previous billed visit; the ids are those later visits."""
        previous = func.lag(_v.c.start_at).over(partition_by=_v.c.doctor_id, order_by=(_v.c.start_at, _v.c.id))
        timed = _scoped(select(_v.c.id, _v.c.clinic_id, _v.c.doctor_id, _v.c.start_at, previous.label("previous"))
                        .where(_FLAG_BILLED), _v.c.clinic_id, _v.c.doctor_id, clinic_id, doctor_id).subquery()
        day = _LocalDay(timed.c.start_at)
        stmt = (select(timed.c.clinic_id, timed.c.doctor_id, day.label("day"), func.count().label("value"),
                       _IdList(timed.c.id).label("visit_ids"))
                .where(timed.c.previous.is_not(None),
                       _SecondsBetween(timed.c.start_at, timed.c.previous) < bindparam("gap"))
                .group_by(timed.c.clinic_id, timed.c.doctor_id, day)
                .having(func.count() >= bindparam("at_least")))
        return await self._rows(stmt, {"start": start, "end": end, "gap": gap_seconds, "at_least": at_least})

    async def two_clinics(self, start: dt.datetime, end: dt.datetime, clinic_id: int | None,
                          doctor_id: int | None) -> list[AnyRow]:
        """Doctor-days on which the doctor's billed visits overlap billed visits of a doctor with the same phone in
        another clinic; ``visit_ids`` are the doctor's own, ``other_ids`` the other clinic's."""
        other_doctor, other = t.doctors.alias("other_doctor"), t.visits.alias("other_visit")
        stmt = (select(_v.c.clinic_id, _v.c.doctor_id, _visit_day.label("day"),
                       func.count(distinct(_v.c.id)).label("value"), _IdList(_v.c.id).label("visit_ids"),
                       func.min(other.c.clinic_id).label("other_clinic_id"),
                       func.count(distinct(other.c.clinic_id)).label("other_clinics"))
                .select_from(_v.join(_d, _d.c.id == _v.c.doctor_id)
                             .join(other_doctor, and_(other_doctor.c.phone == _d.c.phone,
                                                      other_doctor.c.clinic_id != _d.c.clinic_id))
                             .join(other, and_(other.c.doctor_id == other_doctor.c.id, other.c.state != _CANCELLED,
                                               other.c.start_at >= bindparam("wide_start"),
                                               other.c.start_at < bindparam("end"))))
                .where(_FLAG_BILLED, _SecondsBetween(other.c.start_at, _v.c.start_at) < _v.c.duration_s,
                       _SecondsBetween(_v.c.start_at, other.c.start_at) < other.c.duration_s)
                .group_by(_v.c.clinic_id, _v.c.doctor_id, _visit_day))
        return await self._rows(_scoped(stmt, _v.c.clinic_id, _v.c.doctor_id, clinic_id, doctor_id),
                                {"start": start, "end": end, "wide_start": start - dt.timedelta(hours=12)})

    async def code_shares(self, start: dt.datetime, end: dt.datetime, clinic_id: int | None,
                          doctor_id: int | None = None) -> list[AnyRow]:
        """Per doctor, the billed in-person visits with evidence and how many of them rest on a code (all the
        clinic's doctors: the service compares each with the clinic's median). With ``doctor_id``, only that
        doctor's row carries its ids (the others are counted for the median; their ids would go unread)."""
        by_code = _v.c.verified_by == VerificationMethod.CODE.value
        listed = by_code if doctor_id is None else and_(by_code, _v.c.doctor_id == doctor_id)
        stmt = (select(_v.c.clinic_id, _v.c.doctor_id, func.count().label("verified"), _count(by_code).label("code"),
                       _IdList(case((listed, _v.c.id))).label("visit_ids"))
                .where(_FLAG_BILLED, _v.c.mode == VisitMode.IN_PERSON.value, _v.c.verified_by.is_not(None))
                .group_by(_v.c.clinic_id, _v.c.doctor_id))
        return await self._rows(_scoped(stmt, _v.c.clinic_id, None, clinic_id, None), {"start": start, "end": end})

    async def answer_shares(self, start: dt.datetime, end: dt.datetime, clinic_id: int | None,
                            doctor_id: int | None) -> list[AnyRow]:
        """Per doctor, billed visits and those unverified, disputed, never answered and registered late, each
        with its ids."""
        no_answer = and_(_v.c.state.not_in([_CONFIRMED, _DISPUTED, _SCHEDULED]), _v.c.attended_claim_at.is_(None))
        late = _v.c.registered_late.is_(True)
        shares = {"unverified": _unverified, "disputed": _disputed, "no_answer": no_answer, "late": late}
        stmt = (select(_v.c.clinic_id, _v.c.doctor_id, func.count().label("billed"),
                       *(_count(rule).label(name) for name, rule in shares.items()),
                       *(_IdList(case((rule, _v.c.id))).label(f"{name}_ids") for name, rule in shares.items()))
                .where(_FLAG_BILLED).group_by(_v.c.clinic_id, _v.c.doctor_id))
        return await self._rows(_scoped(stmt, _v.c.clinic_id, _v.c.doctor_id, clinic_id, doctor_id),
                                {"start": start, "end": end})

    async def face_replacements(self, start: dt.datetime, end: dt.datetime, clinic_id: int | None,
                                *, at_least: int) -> list[AnyRow]:
        """Clinics that replaced at least ``at_least`` enrolled faces in the period, with the visits verified
        against those new faces."""
        stmt = (select(_pc.c.clinic_id, func.count(distinct(_pc.c.id)).label("value"),
                       _IdList(_v.c.id).label("visit_ids"))
                .select_from(_pc.outerjoin(_v, _v.c.verified_enrolment_id == _pc.c.id))
                .where(_pc.c.kind == "face_replaced", _pc.c.at >= bindparam("start"), _pc.c.at < bindparam("end"))
                .group_by(_pc.c.clinic_id).having(func.count(distinct(_pc.c.id)) >= bindparam("at_least")))
        return await self._rows(_scoped(stmt, _pc.c.clinic_id, None, clinic_id, None),
                                {"start": start, "end": end, "at_least": at_least})

    async def enrolment_disputes(self, start: dt.datetime, end: dt.datetime, clinic_id: int | None) -> list[AnyRow]:
        """Clinics whose patients said "this wasn't me" to a change in the period, with the visits verified
        against a disputed enrolment."""
        stmt = (select(_pc.c.clinic_id, func.count(distinct(_pc.c.id)).label("value"),
                       _IdList(_v.c.id).label("visit_ids"))
                .select_from(_pc.outerjoin(_v, _v.c.verified_enrolment_id == _pc.c.id))
                .where(_pc.c.disputed_at >= bindparam("start"), _pc.c.disputed_at < bindparam("end"))
                .group_by(_pc.c.clinic_id))
        return await self._rows(_scoped(stmt, _pc.c.clinic_id, None, clinic_id, None), {"start": start, "end": end})

    async def shared_phones(self, start: dt.datetime, end: dt.datetime, clinic_id: int | None,
                            *, above: int) -> list[AnyRow]:
        """A clinic's phone numbers shared by more than ``above`` of its patients, with those patients' billed
        visits in the period (a number with none raised no bill in the period, so no flag)."""
        stmt = (select(_p.c.clinic_id, _p.c.phone, func.count(distinct(_p.c.id)).label("value"),
                       _IdList(_v.c.id).label("visit_ids"))
                .select_from(_p.outerjoin(_v, and_(_v.c.patient_id == _p.c.id, _FLAG_BILLED)))
                .group_by(_p.c.clinic_id, _p.c.phone)
                .having(and_(func.count(distinct(_p.c.id)) > bindparam("above"), func.count(_v.c.id) > 0)))
        return await self._rows(_scoped(stmt, _p.c.clinic_id, None, clinic_id, None),
                                {"start": start, "end": end, "above": above})

    async def code_cap_hours(self, start: dt.datetime, end: dt.datetime, clinic_id: int | None,
                             *, cap: int, at_least: int) -> list[AnyRow]:
        """Clinics whose wrong codes reached ``cap`` in at least ``at_least`` clock hours of the period, with the
        visits verified by code in those hours (a guess that hit would be among them)."""
        hours = t.clinic_code_failures
        return await self._cap_hours(hours, hours.c.clinic_id, _v.c.verified_by == VerificationMethod.CODE.value,
                                     start, end, clinic_id, cap=cap, at_least=at_least)

    async def face_cap_hours(self, start: dt.datetime, end: dt.datetime, clinic_id: int | None,
                             *, cap: int, at_least: int) -> list[AnyRow]:
        """Clinics whose failed face checks reached ``cap`` in at least ``at_least`` clock hours, with the visits
        verified by a face in those hours (a stranger's face tried until one passed would be among them)."""
        hours = t.face_failures_hourly
        return await self._cap_hours(hours, hours.c.subject_id, and_(
            _v.c.verified_by.is_not(None), _v.c.verified_by != VerificationMethod.CODE.value),
            start, end, clinic_id, cap=cap, at_least=at_least, only=hours.c.scope == "clinic")

    async def _cap_hours(self, hours: Any, clinic: Any, verified: ColumnElement[bool], start: dt.datetime,
                         end: dt.datetime, clinic_id: int | None, *, cap: int, at_least: int,
                         only: ColumnElement[bool] | None = None) -> list[AnyRow]:
        """One statement for both hourly counters: the clinic's hours at ``cap`` and the visits verified in them."""
        stmt = (select(clinic.label("clinic_id"), func.count(distinct(hours.c.hour_start)).label("value"),
                       _IdList(_v.c.id).label("visit_ids"))
                .select_from(hours.outerjoin(_v, and_(
                    _v.c.clinic_id == clinic, verified,
                    _v.c.start_at >= bindparam("wide_start"), _v.c.start_at < bindparam("wide_end"),
                    _v.c.verified_at >= hours.c.hour_start,
                    _SecondsBetween(_v.c.verified_at, hours.c.hour_start) < 3600)))
                .where(hours.c.failures >= bindparam("cap"), hours.c.hour_start >= bindparam("start"),
                       hours.c.hour_start < bindparam("end"), *([] if only is None else [only]))
                .group_by(clinic).having(func.count(distinct(hours.c.hour_start)) >= bindparam("at_least")))
        return await self._rows(_scoped(stmt, clinic, None, clinic_id, None),
                                {"start": start, "end": end, "cap": cap, "at_least": at_least,
                                 "wide_start": start - dt.timedelta(days=1), "wide_end": end + dt.timedelta(days=1)})

    async def service_mismatches(self, start: dt.datetime, end: dt.datetime, clinic_id: int | None,
                                 doctor_id: int | None) -> list[AnyRow]:
        """Per doctor and service, billed visits whose patient's sex or age (from the IIN, on the visit's local
        day) is outside the service's rule."""
        age = _AGE_AT_VISIT
        misfit = or_(and_(_sr.c.sex == "male", ~_IS_MALE), and_(_sr.c.sex == "female", _IS_MALE),
                     and_(_sr.c.min_age.is_not(None), age < _sr.c.min_age),
                     and_(_sr.c.max_age.is_not(None), age > _sr.c.max_age))
        stmt = (select(_v.c.clinic_id, _v.c.doctor_id, _v.c.service_code, func.count().label("value"),
                       _IdList(_v.c.id).label("visit_ids"))
                .select_from(_v.join(_p, _p.c.id == _v.c.patient_id).join(_sr, _sr.c.service_code == _v.c.service_code))
                .where(_FLAG_BILLED, misfit).group_by(_v.c.clinic_id, _v.c.doctor_id, _v.c.service_code))
        return await self._rows(_scoped(stmt, _v.c.clinic_id, _v.c.doctor_id, clinic_id, doctor_id),
                                {"start": start, "end": end})

    async def after_death(self, start: dt.datetime, end: dt.datetime, clinic_id: int | None,
                          doctor_id: int | None) -> list[AnyRow]:
        """Per doctor, billed visits on a local day after the patient's listed date of death."""
        stmt = (select(_v.c.clinic_id, _v.c.doctor_id, func.count().label("value"), _IdList(_v.c.id).label("visit_ids"),
                       func.min(_dx.c.died_on).label("earliest_death"))
                .select_from(_v.join(_p, _p.c.id == _v.c.patient_id).join(_dx, _dx.c.iin == _p.c.iin))
                .where(_FLAG_BILLED, _visit_day > _dx.c.died_on).group_by(_v.c.clinic_id, _v.c.doctor_id))
        return await self._rows(_scoped(stmt, _v.c.clinic_id, _v.c.doctor_id, clinic_id, doctor_id),
                                {"start": start, "end": end})
