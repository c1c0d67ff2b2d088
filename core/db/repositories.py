"""Repositories: translate between table rows and domain objects. One per aggregate, all on one connection."""
from __future__ import annotations

import builtins
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Insert,
    Integer,
    Row,
    Select,
    String,
    Table,
    and_,
    bindparam,
    case,
    cast,
    delete,
    exists,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import Insert as PostgresqlInsert
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from core import audit
from core.db import tables as t
from core.db.sqlite_driver import POINT_WRITE
from core.errors import NotFound
from core.model import (
    FRESH_REFERENCE,
    Clinic,
    ClinicAdmin,
    Doctor,
    Language,
    OutboxKind,
    OutboxMessage,
    OutboxStatus,
    Patient,
    PatientChange,
    Recipient,
    Visit,
    VisitEvent,
    VisitMode,
    VisitState,
)

type AnyRow = Row[*tuple[Any, ...]]  # a result row of any width, read by column label
_Select = TypeVar("_Select", bound="Select[*tuple[Any, ...]]")


class _Repo:
    def __init__(self, conn: AsyncConnection, for_update: bool):
        self.conn = conn
        self._for_update = for_update  # PostgreSQL row locks; SQLite already holds the write lock

    def _locked(self, stmt: _Select) -> _Select:
        return stmt.with_for_update() if self._for_update else stmt


class ClinicRepo(_Repo):
    async def add(self, clinic: Clinic, now: dt.datetime) -> Clinic:
        res = await self.conn.execute(insert(t.clinics).values(name=clinic.name,
                                                               created_at=now).returning(t.clinics.c.id))
        clinic.id = res.scalar_one()
        return clinic

    async def get(self, clinic_id: int) -> Clinic:
        row = (await self.conn.execute(select(t.clinics).where(t.clinics.c.id == clinic_id))).first()
        if row is None:
            raise NotFound(f"clinic {clinic_id} not found")
        return Clinic(id=row.id, name=row.name)

    async def list(self) -> list[Clinic]:
        rows = (await self.conn.execute(select(t.clinics).order_by(t.clinics.c.id))).all()
        return [Clinic(id=r.id, name=r.name) for r in rows]


def _doctor(row: AnyRow) -> Doctor:
    return Doctor(id=row.id, clinic_id=row.clinic_id, full_name=row.full_name, phone=row.phone,
                  external_ref=row.external_ref, chat_id=row.chat_id)


class DoctorRepo(_Repo):
    async def add(self, doctor: Doctor, now: dt.datetime) -> Doctor:
        res = await self.conn.execute(insert(t.doctors).values(
            clinic_id=doctor.clinic_id, full_name=doctor.full_name, phone=doctor.phone,
            external_ref=doctor.external_ref, chat_id=doctor.chat_id, created_at=now).returning(t.doctors.c.id))
        doctor.id = res.scalar_one()
        return doctor

    async def get(self, doctor_id: int, clinic_id: int | None = None) -> Doctor:
        stmt = select(t.doctors).where(t.doctors.c.id == doctor_id)
        if clinic_id is not None:
            stmt = stmt.where(t.doctors.c.clinic_id == clinic_id)
        row = (await self.conn.execute(stmt)).first()
        if row is None:
            raise NotFound(f"doctor {doctor_id} not found")
        return _doctor(row)

    async def by_phone(self, phone: str) -> list[Doctor]:
        rows = (await self.conn.execute(select(t.doctors).where(t.doctors.c.phone == phone))).all()
        return [_doctor(r) for r in rows]

    async def by_chat(self, chat_id: int) -> list[Doctor]:
        rows = (await self.conn.execute(select(t.doctors).where(t.doctors.c.chat_id == chat_id))).all()
        return [_doctor(r) for r in rows]

    async def list_by_clinic(self, clinic_id: int) -> list[Doctor]:
        rows = (await self.conn.execute(select(t.doctors).where(t.doctors.c.clinic_id == clinic_id)
                                        .order_by(t.doctors.c.id))).all()
        return [_doctor(r) for r in rows]

    async def set_chat(self, phone: str, chat_id: int | None) -> int:
        res = await self.conn.execute(update(t.doctors).where(t.doctors.c.phone == phone).values(chat_id=chat_id))
        return res.rowcount

    async def unlink_chat(self, chat_id: int) -> int:
        res = await self.conn.execute(update(t.doctors).where(t.doctors.c.chat_id == chat_id).values(chat_id=None))
        return res.rowcount


def _admin(row: AnyRow) -> ClinicAdmin:
    return ClinicAdmin(id=row.id, clinic_id=row.clinic_id, full_name=row.full_name, phone=row.phone,
                       chat_id=row.chat_id)


class AdminRepo(_Repo):
    async def add(self, admin: ClinicAdmin, now: dt.datetime) -> ClinicAdmin:
        res = await self.conn.execute(insert(t.clinic_admins).values(
            clinic_id=admin.clinic_id, full_name=admin.full_name, phone=admin.phone, chat_id=admin.chat_id,
            created_at=now).returning(t.clinic_admins.c.id))
        admin.id = res.scalar_one()
        return admin

    async def get(self, admin_id: int) -> ClinicAdmin:
        row = (await self.conn.execute(select(t.clinic_admins).where(t.clinic_admins.c.id == admin_id))).first()
        if row is None:
            raise NotFound(f"clinic admin {admin_id} not found")
        return _admin(row)

    async def by_phone(self, phone: str) -> list[ClinicAdmin]:
        rows = (await self.conn.execute(select(t.clinic_admins).where(t.clinic_admins.c.phone == phone))).all()
        return [_admin(r) for r in rows]

    async def by_chat(self, chat_id: int) -> list[ClinicAdmin]:
        rows = (await self.conn.execute(select(t.clinic_admins).where(t.clinic_admins.c.chat_id == chat_id))).all()
        return [_admin(r) for r in rows]

    async def list_by_clinic(self, clinic_id: int) -> list[ClinicAdmin]:
        rows = (await self.conn.execute(select(t.clinic_admins).where(t.clinic_admins.c.clinic_id == clinic_id)
                                        .order_by(t.clinic_admins.c.id))).all()
        return [_admin(r) for r in rows]

    async def set_chat(self, phone: str, chat_id: int | None) -> int:
        res = await self.conn.execute(update(t.clinic_admins).where(t.clinic_admins.c.phone == phone)
                                      .values(chat_id=chat_id))
        return res.rowcount

    async def unlink_chat(self, chat_id: int) -> int:
        res = await self.conn.execute(update(t.clinic_admins).where(t.clinic_admins.c.chat_id == chat_id)
                                      .values(chat_id=None))
        return res.rowcount


def _patient(row: AnyRow) -> Patient:
    return Patient(id=row.id, clinic_id=row.clinic_id, iin=row.iin, full_name=row.full_name, phone=row.phone,
                   language=Language(row.language), chat_id=row.chat_id, chat_blocked=row.chat_blocked,
                   consent_at=row.consent_at, consent_by=row.consent_by)


class PatientRepo(_Repo):
    async def get(self, patient_id: int, clinic_id: int | None = None) -> Patient:
        stmt = select(t.patients).where(t.patients.c.id == patient_id)
        if clinic_id is not None:
            stmt = stmt.where(t.patients.c.clinic_id == clinic_id)
        row = (await self.conn.execute(self._locked(stmt))).first()
        if row is None:
            raise NotFound(f"patient {patient_id} not found")
        return _patient(row)

    async def by_iin(self, clinic_id: int, iin: str) -> Patient | None:
        row = (await self.conn.execute(select(t.patients).where(
            and_(t.patients.c.clinic_id == clinic_id, t.patients.c.iin == iin)))).first()
        return _patient(row) if row else None

    async def by_phone(self, phone: str) -> list[Patient]:
        rows = (await self.conn.execute(select(t.patients).where(t.patients.c.phone == phone))).all()
        return [_patient(r) for r in rows]

    async def by_chat(self, chat_id: int) -> list[Patient]:
        rows = (await self.conn.execute(select(t.patients).where(t.patients.c.chat_id == chat_id)
                                        .order_by(t.patients.c.id))).all()
        return [_patient(r) for r in rows]

    async def add(self, patient: Patient, now: dt.datetime) -> Patient:
        res = await self.conn.execute(insert(t.patients).values(
            clinic_id=patient.clinic_id, iin=patient.iin, full_name=patient.full_name, phone=patient.phone,
            language=patient.language.value, chat_id=patient.chat_id, chat_blocked=patient.chat_blocked,
            consent_at=patient.consent_at, consent_by=patient.consent_by, created_at=now, updated_at=now,
        ).returning(t.patients.c.id))
        patient.id = res.scalar_one()
        return patient

    async def save(self, patient: Patient, now: dt.datetime) -> None:
        await self.conn.execute(update(t.patients).where(t.patients.c.id == patient.id).values(
            full_name=patient.full_name, phone=patient.phone, language=patient.language.value,
            chat_id=patient.chat_id, chat_blocked=patient.chat_blocked, consent_at=patient.consent_at,
            consent_by=patient.consent_by, updated_at=now))

    async def set_chat(self, phone: str, chat_id: int | None, language: Language | None = None) -> int:
        values: dict[str, object] = {"chat_id": chat_id, "chat_blocked": False}
        if language is not None:
            values["language"] = language.value
        res = await self.conn.execute(update(t.patients).where(t.patients.c.phone == phone).values(**values))
        return res.rowcount

    async def unlink_chat(self, chat_id: int) -> int:
        res = await self.conn.execute(update(t.patients).where(t.patients.c.chat_id == chat_id).values(chat_id=None))
        return res.rowcount

    async def set_language_for_chat(self, chat_id: int, language: Language) -> None:
        await self.conn.execute(update(t.patients).where(t.patients.c.chat_id == chat_id)
                                .values(language=language.value))

    async def mark_chat_blocked(self, chat_id: int) -> None:
        await self.conn.execute(update(t.patients).where(t.patients.c.chat_id == chat_id)
                                .values(chat_blocked=True))

    async def unblock_chat(self, chat_id: int) -> None:
        """Writes only rows still marked blocked: called for every update a user sends."""
        await self.conn.execute(update(t.patients).where(t.patients.c.chat_id == chat_id, t.patients.c.chat_blocked)
                                .values(chat_blocked=False))


class ChatUserRepo(_Repo):
    """A chat's own settings: its language and whether it said /stop."""

    async def upsert(self, chat_id: int, now: dt.datetime, *, language: Language | None = None,
                     stopped: bool | None = None) -> None:
        """Set the given fields; a chat seen for the first time starts in Russian unless a language is given."""
        values: dict[str, object] = {}
        if language is not None:
            values["language"] = Language(language).value
        if stopped is not None:
            values["stopped"] = stopped
        res = await self.conn.execute(update(t.chat_users).where(t.chat_users.c.chat_id == chat_id)
                                      .values(updated_at=now, **values))
        if res.rowcount == 0:
            values.setdefault("language", Language.RU.value)
            await self.conn.execute(insert(t.chat_users).values(chat_id=chat_id, created_at=now, updated_at=now,
                                                               **values))


class ProcessedUpdateRepo(_Repo):
    """Telegram update ids already handled, per bot: what makes a redelivered update a no-op."""

    async def add(self, bot_id: int, update_id: int, now: dt.datetime) -> None:
        """A repeat fails on the primary key (the unit of work raises core.errors.ConcurrentWrite)."""
        await self.conn.execute(insert(t.processed_updates).values(update_id=update_id, bot_id=bot_id, at=now))

    async def release(self, bot_id: int, update_id: int) -> None:
        await self.conn.execute(delete(t.processed_updates).where(and_(
            t.processed_updates.c.update_id == update_id, t.processed_updates.c.bot_id == bot_id)))

    async def prune(self, before: dt.datetime) -> int:
        res = await self.conn.execute(delete(t.processed_updates).where(t.processed_updates.c.at < before))
        return res.rowcount


@dataclass(frozen=True)
class Reference:
    sealed: bytes
    enrolment_id: int | None
    enrolled_at: dt.datetime
    key_version: int = 1  # core.face_references.MASTER_KEY or PATIENT_KEY
    id: int = 0


class TemplateRepo(_Repo):
    async def replace(self, patient_id: int, sealed: list[bytes], now: dt.datetime,
                      enrolment_id: int | None = None, key_version: int = 1) -> int:
        """Re-enrolment: revoke every active reference, then store the new ones (naming the change that made them)."""
        await self.revoke_all(patient_id, now)
        for blob in sealed:
            await self.conn.execute(insert(t.face_templates).values(patient_id=patient_id, sealed=blob,
                                                                    created_at=now, enrolment_id=enrolment_id,
                                                                    key_version=key_version))
        return len(sealed)

    async def shred(self, patient_ids: builtins.list[int], now: dt.datetime) -> int:
        """Withdrawal or retention: every reference of these patients revoked and its ciphertext emptied (the rows
        stay, so the record still says a face was enrolled and when). How many still held a ciphertext."""
        if not patient_ids:
            return 0
        ft = t.face_templates
        res = await self.conn.execute(update(ft).where(and_(ft.c.patient_id.in_(patient_ids),
                                                            func.length(ft.c.sealed) > 0))
                                      .values(sealed=b"", revoked_at=func.coalesce(ft.c.revoked_at, now)))
        return res.rowcount

    async def legacy(self, limit: int) -> builtins.list[tuple[int, int, bytes]]:
        """(id, patient, ciphertext) of active references still sealed under the environment's key."""
        ft = t.face_templates
        rows = (await self.conn.execute(select(ft.c.id, ft.c.patient_id, ft.c.sealed).where(and_(
            ft.c.key_version == 1, ft.c.revoked_at.is_(None), func.length(ft.c.sealed) > 0))
            .order_by(ft.c.id).limit(limit))).all()
        return [(r.id, r.patient_id, bytes(r.sealed)) for r in rows]

    async def reseal(self, template_id: int, old: bytes, sealed: bytes, key_version: int) -> bool:
        """Swap one reference's ciphertext, unless it changed meanwhile (revoked, shredded, re-sealed)."""
        ft = t.face_templates
        res = await self.conn.execute(update(ft).where(and_(ft.c.id == template_id, ft.c.sealed == old,
                                                            ft.c.revoked_at.is_(None)))
                                      .values(sealed=sealed, key_version=key_version))
        return res.rowcount == 1

    async def ever_enrolled(self, patient_id: int) -> bool:
        """Any reference ever stored, revoked ones too: deleting a face first does not make the next one a first."""
        return (await self.conn.execute(select(t.face_templates.c.id).where(
            t.face_templates.c.patient_id == patient_id).limit(1))).first() is not None

    async def revoke_all(self, patient_id: int, now: dt.datetime) -> int:
        res = await self.conn.execute(update(t.face_templates).where(and_(
            t.face_templates.c.patient_id == patient_id, t.face_templates.c.revoked_at.is_(None)))
            .values(revoked_at=now))
        return res.rowcount

    async def active_references(self, patient_id: int) -> list[Reference]:
        """The active references with the enrolment that made each (a reference stored before enrolments were
        recorded has none; its own creation time stands in for the enrolment's)."""
        ft, pc = t.face_templates, t.patient_changes
        rows = (await self.conn.execute(
            select(ft.c.id, ft.c.sealed, ft.c.enrolment_id, ft.c.created_at, ft.c.key_version, pc.c.at)
            .select_from(ft.outerjoin(pc, pc.c.id == ft.c.enrolment_id))
            .where(and_(ft.c.patient_id == patient_id, ft.c.revoked_at.is_(None))).order_by(ft.c.id))).all()
        return [Reference(bytes(r.sealed), r.enrolment_id, r.at or r.created_at, r.key_version, r.id) for r in rows]

    async def active(self, patient_id: int) -> list[bytes]:
        rows = (await self.conn.execute(select(t.face_templates.c.sealed).where(and_(
            t.face_templates.c.patient_id == patient_id, t.face_templates.c.revoked_at.is_(None)))
            .order_by(t.face_templates.c.id))).all()
        return [bytes(r.sealed) for r in rows]


# Read with every visit (and by the digest): when the face enrolment a match was made against was made, and whether
# the verification was flagged as made against a fresh reference (the verify event says so).
ENROLLED_AT = (select(t.patient_changes.c.at).where(t.patient_changes.c.id == t.visits.c.verified_enrolment_id)
               .scalar_subquery())
FRESH = exists().where(and_(t.visit_events.c.visit_id == t.visits.c.id, t.visit_events.c.step == "verify",
                            t.visit_events.c.detail == FRESH_REFERENCE))
_VISITS = select(t.visits, ENROLLED_AT.label("enrolled_at"), FRESH.label("fresh_reference"))
# Module-level statements with bound parameters are built once, and SQLAlchemy compiles each once: what the code
# check, the hottest path, runs. Those marked _POINT read and write a few rows found by key: on SQLite, while the
# writer holds the write lock, they run on the event loop's thread (core.db.sqlite_driver.POINT_WRITE).
_POINT = {POINT_WRITE: True}
_SAVE_VISIT = (update(t.visits).where(t.visits.c.id == bindparam("the_visit"))  # SET: the parameters' columns
               .execution_options(**_POINT))
_ADD_EVENT = insert(t.visit_events).execution_options(**_POINT)
_STATE_COLUMNS = ("state", "verified_by", "verified_at", "answered_at", "dispute_reason", "attended_claim_at",
                  "verified_enrolment_id")
_EVENT_COLUMNS = ("visit_id", "at", "step", "from_state", "to_state", "actor", "method", "detail")
# PostgreSQL: the state and the event that changed it as one statement (a data-modifying CTE; SQLite has none).
_SAVE_VISIT_WITH_EVENT = (
    update(t.visits).where(t.visits.c.id == bindparam("the_visit"))
    .values({name: bindparam(f"visit_{name}", type_=t.visits.c[name].type) for name in _STATE_COLUMNS})
    .add_cte(insert(t.visit_events).values({name: bindparam(f"event_{name}", type_=t.visit_events.c[name].type)
                                            for name in _EVENT_COLUMNS}).cte("event")))
_MARK_CODE_USED = update(t.visit_codes).where(t.visit_codes.c.visit_id == bindparam("the_visit")).values(
    used_at=bindparam("code_used_at", type_=t.visit_codes.c.used_at.type)).execution_options(**_POINT)
# A verification by code: the code's use lands in the same statement as the state change it made.
_SAVE_VISIT_WITH_EVENT_AND_CODE_USED = _SAVE_VISIT_WITH_EVENT.add_cte(_MARK_CODE_USED.cte("code_used"))


def _visit(row: AnyRow) -> Visit:
    return Visit(id=row.id, clinic_id=row.clinic_id, doctor_id=row.doctor_id, patient_id=row.patient_id,
                 start=row.start_at, duration=dt.timedelta(seconds=row.duration_s), mode=VisitMode(row.mode),
                 service_code=row.service_code, state=VisitState(row.state), verified_by=row.verified_by,
                 verified_at=row.verified_at, answered_at=row.answered_at, dispute_reason=row.dispute_reason,
                 attended_claim_at=row.attended_claim_at, registered_at=row.created_at,
                 registered_late=row.registered_late, verified_enrolment_id=row.verified_enrolment_id,
                 enrolled_at=row.enrolled_at, fresh_reference=bool(row.fresh_reference))


def _event_row(visit_id: int, event: VisitEvent) -> dict[str, object]:
    return dict(visit_id=visit_id, at=event.at, step=event.step,
                from_state=event.from_state.value if event.from_state else None, to_state=event.to_state.value,
                actor=event.actor.value, method=event.method, detail=event.detail)


class VisitRepo(_Repo):
    def __init__(self, conn: AsyncConnection, for_update: bool, audit_repo: AuditRepo):
        super().__init__(conn, for_update)
        self._audit = audit_repo

    async def add(self, visit: Visit, now: dt.datetime) -> Visit:
        res = await self.conn.execute(insert(t.visits).values(
            clinic_id=visit.clinic_id, doctor_id=visit.doctor_id, patient_id=visit.patient_id,
            start_at=visit.start, duration_s=int(visit.duration.total_seconds()), mode=visit.mode.value,
            service_code=visit.service_code, state=visit.state.value, registered_late=visit.registered_late,
            created_at=now).returning(t.visits.c.id))
        visit.id, visit.registered_at = res.scalar_one(), now
        return visit

    async def get(self, visit_id: int, clinic_id: int | None = None, *, lock: bool = False) -> Visit:
        stmt = _VISITS.where(t.visits.c.id == visit_id)
        if clinic_id is not None:
            stmt = stmt.where(t.visits.c.clinic_id == clinic_id)
        row = (await self.conn.execute(self._locked(stmt) if lock else stmt)).first()
        if row is None:
            raise NotFound(f"visit {visit_id} not found")
        return _visit(row)

    async def save(self, visit: Visit, *, code_used_at: dt.datetime | None = None) -> None:
        """Persist state fields and write each pending event to the events table and the audit chain; with
        ``code_used_at``, mark the visit's code used (the verification by code that made this change): on
        PostgreSQL its audit row is then appended in the same statement, so the caller commits next."""
        assert visit.id is not None, "a visit is saved after it was added"
        state = dict(state=visit.state.value, verified_by=visit.verified_by.value if visit.verified_by else None,
                     verified_at=visit.verified_at, answered_at=visit.answered_at,
                     dispute_reason=visit.dispute_reason, attended_claim_at=visit.attended_claim_at,
                     verified_enrolment_id=visit.verified_enrolment_id)
        events = visit.pending_events
        if len(events) == 1 and self.conn.dialect.name == "postgresql":  # one round trip, not two or three
            params = {"the_visit": visit.id, **{f"visit_{k}": v for k, v in state.items()},
                      **{f"event_{k}": v for k, v in _event_row(visit.id, events[0]).items()}}
            if code_used_at is None:
                await self.conn.execute(_SAVE_VISIT_WITH_EVENT, params)
                await self._audit_event(visit, events[0])
            elif self._audit.idle:  # the verification's audit row rides along: its chain's head is held until commit
                audit_row = self._audit.row_params(*self._audit_row(visit, events[0]))
                saved = await self.conn.execute(_SAVE_VERIFIED_BY_CODE_WITH_AUDIT,
                                                {**params, "code_used_at": code_used_at, **audit_row})
                if saved.scalar_one() is None:  # the chain has no head yet: its first row is chained at commit
                    await self._audit_event(visit, events[0])
            else:
                await self.conn.execute(_SAVE_VISIT_WITH_EVENT_AND_CODE_USED, {**params, "code_used_at": code_used_at})
                await self._audit_event(visit, events[0])
        else:
            if code_used_at is not None:
                await self.conn.execute(_MARK_CODE_USED, {"the_visit": visit.id, "code_used_at": code_used_at})
            await self.conn.execute(_SAVE_VISIT, {"the_visit": visit.id, **state})
            for event in events:
                await self.record_event(visit, event)
        events.clear()

    async def record_event(self, visit: Visit, event: VisitEvent) -> None:
        """An event that changed no state field (a code issued, a face attempt); its audit row goes to the visit's
        clinic's chain."""
        assert visit.id is not None, "a visit's events are recorded after it was added"
        await self.conn.execute(_ADD_EVENT, _event_row(visit.id, event))
        await self._audit_event(visit, event)

    async def _audit_event(self, visit: Visit, event: VisitEvent) -> None:
        await self._audit.append(*self._audit_row(visit, event)[1:], clinic_id=visit.clinic_id)

    @staticmethod
    def _audit_row(visit: Visit, event: VisitEvent) -> tuple[str, dt.datetime, str, str, str, dict[str, Any]]:
        """The event's audit row: its chain, then what AuditRepo.append takes."""
        return (audit.chain_of(visit.clinic_id), event.at, event.actor.value, f"visit.{event.step}",
                f"visit:{visit.id}", {"from": event.from_state.value if event.from_state else None,
                                      "to": event.to_state.value, "method": event.method})

    async def events(self, visit_id: int) -> list[VisitEvent]:
        rows = (await self.conn.execute(select(t.visit_events).where(t.visit_events.c.visit_id == visit_id)
                                        .order_by(t.visit_events.c.id))).all()
        return [VisitEvent(visit_id=r.visit_id, at=r.at, step=r.step,
                           from_state=VisitState(r.from_state) if r.from_state else None,
                           to_state=VisitState(r.to_state), actor=r.actor, method=r.method, detail=r.detail)
                for r in rows]

    async def list(self, *, clinic_id: int, start_from: dt.datetime | None = None,
                   start_to: dt.datetime | None = None, doctor_id: int | None = None,
                   state: VisitState | None = None, patient_id: int | None = None,
                   limit: int = 1000, offset: int = 0) -> list[Visit]:
        stmt = _VISITS.where(t.visits.c.clinic_id == clinic_id)
        if start_from is not None:
            stmt = stmt.where(t.visits.c.start_at >= start_from)
        if start_to is not None:
            stmt = stmt.where(t.visits.c.start_at < start_to)
        if doctor_id is not None:
            stmt = stmt.where(t.visits.c.doctor_id == doctor_id)
        if state is not None:
            stmt = stmt.where(t.visits.c.state == state.value)
        if patient_id is not None:
            stmt = stmt.where(t.visits.c.patient_id == patient_id)
        rows = (await self.conn.execute(stmt.order_by(t.visits.c.start_at, t.visits.c.id)
                                        .limit(limit).offset(offset))).all()
        return [_visit(r) for r in rows]

    async def any_between(self, patient_id: int, doctor_id: int) -> bool:
        """Whether the patient has ever had a visit with the doctor (what makes them that doctor's patient)."""
        return (await self.conn.execute(select(t.visits.c.id).where(and_(
            t.visits.c.patient_id == patient_id, t.visits.c.doctor_id == doctor_id)).limit(1))).first() is not None

    async def scheduled_ending_before(self, moment: dt.datetime, limit: int = 500) -> builtins.list[int]:
        """Ids of scheduled visits whose end lies before ``moment`` (their window has closed)."""
        end_expr = t.visits.c.start_at  # duration is bounded (≤12 h); filter precisely in Python
        rows = (await self.conn.execute(select(t.visits.c.id, t.visits.c.start_at, t.visits.c.duration_s).where(and_(
            t.visits.c.state == VisitState.SCHEDULED.value, end_expr < moment)).order_by(t.visits.c.start_at)
            .limit(limit))).all()
        return [r.id for r in rows if r.start_at + dt.timedelta(seconds=r.duration_s) < moment]

    async def count_code_attempt(self, visit_id: int, clinic_id: int,
                                 hour_start: dt.datetime) -> tuple[Visit, int, CodeCheckState]:
        """Count one code attempt; the visit as it now stands, the new total, and what the check reads next: the
        visit's code and this clock hour's wrong codes of its doctor and its clinic. The UPDATE takes the visit's
        row lock first, so concurrent checks of one visit count exactly; a check refused afterwards leaves without
        committing, and so without counting. The reads ride in the count's RETURNING: one statement.

        SQLite's writer holds the whole database from BEGIN IMMEDIATE, so nothing changes under it. A PostgreSQL
        statement's reads see the database as it stood when it began, before it waited for the visit's lock; only
        the visit row it updates is the one the lock left. A code issued meanwhile (CodeRepo.put, under that lock)
        shows as the row's code_generation differing from the code read, one used meanwhile as a visit no longer
        scheduled: then the code is read again, now after the lock. The hourly wrong codes read may be a wait old:
        they only let a check go on to compare, and the conditional UPDATEs that count a wrong code (CodeRepo.
        take_doctor_failure, take_clinic_failure) are what hold the caps exactly."""
        params = {"visit": visit_id, "clinic": clinic_id, "hour": hour_start}
        row = (await self.conn.execute(_COUNT_CODE_ATTEMPT_AND_READ, params)).first()
        if row is None:
            raise NotFound(f"visit {visit_id} not found")
        state = row
        if self.conn.dialect.name == "postgresql" and (row.code_generation != row.code_row_generation
                                                       or row.state != VisitState.SCHEDULED.value):
            state = (await self.conn.execute(_CODE_CHECK_STATE, {**params, "doctor": row.doctor_id})).one()
        return _visit(row), row.code_attempts, _code_check_state(state)

    async def code_attempts(self, visit_id: int) -> int:
        attempts: int = (await self.conn.execute(select(t.visits.c.code_attempts)
                                                 .where(t.visits.c.id == visit_id))).scalar_one()
        return attempts

    async def take_code_request(self, visit_id: int, cap: int) -> int | None:
        """Count one code request and return the new total, or None (nothing counted) at the cap: a conditional
        UPDATE, so concurrent requests can never pass it."""
        res = await self.conn.execute(update(t.visits).where(and_(t.visits.c.id == visit_id,
                                                                   t.visits.c.code_requests < cap))
                                      .values(code_requests=t.visits.c.code_requests + 1)
                                      .returning(t.visits.c.code_requests))
        total: int | None = res.scalar_one_or_none()
        return total

    async def face_counters(self, visit_id: int) -> tuple[int, int, dt.datetime | None]:
        row = (await self.conn.execute(select(t.visits.c.face_failures, t.visits.c.face_lockouts,
                                              t.visits.c.face_retry_at).where(t.visits.c.id == visit_id))).one()
        return row.face_failures, row.face_lockouts, row.face_retry_at

    async def take_face_attempt(self, visit_id: int, cap: int, now: dt.datetime) -> bool:
        """Reserve one face attempt, or answer False (nothing reserved) while the visit is locked or ``cap``
        attempts of this round are already reserved or failed. One conditional UPDATE, so concurrent frames on
        any number of server processes count exactly; a lock that has run out starts a new round."""
        v = t.visits
        lock_over = and_(v.c.face_retry_at.is_not(None), v.c.face_retry_at <= now)
        res = await self.conn.execute(update(v).where(and_(v.c.id == visit_id, or_(
            and_(v.c.face_retry_at.is_(None), v.c.face_failures < cap), lock_over))).values(
            face_failures=case((v.c.face_retry_at.is_(None), v.c.face_failures + 1), else_=1), face_retry_at=None))
        return res.rowcount == 1

    async def give_back_face_attempt(self, visit_id: int) -> None:
        """An attempt that produced no decision is not counted (a lock set meanwhile stands)."""
        v = t.visits
        await self.conn.execute(update(v).where(and_(v.c.id == visit_id, v.c.face_retry_at.is_(None),
                                                     v.c.face_failures > 0))
                                .values(face_failures=v.c.face_failures - 1))

    async def lock_face(self, visit_id: int, lockouts: int, retry_at: dt.datetime) -> None:
        await self.conn.execute(update(t.visits).where(t.visits.c.id == visit_id).values(
            face_lockouts=lockouts, face_retry_at=retry_at))


@dataclass(frozen=True)
class StoredCaptureSession:
    id: int
    visit_id: int
    clinic_id: int
    challenge: str
    created_by: str
    expires_at: dt.datetime
    state: str
    outcome: str | None
    reason: str | None


def _capture_session(row: AnyRow) -> StoredCaptureSession:
    return StoredCaptureSession(id=row.id, visit_id=row.visit_id, clinic_id=row.clinic_id, challenge=row.challenge,
                                created_by=row.created_by, expires_at=row.expires_at, state=row.state,
                                outcome=row.outcome, reason=row.reason)


class CaptureSessionRepo(_Repo):
    async def add(self, *, token_hash: str, visit_id: int, clinic_id: int, challenge: str, created_by: str,
                  now: dt.datetime, expires_at: dt.datetime, state: str) -> int:
        res = await self.conn.execute(insert(t.capture_sessions).values(
            token_hash=token_hash, visit_id=visit_id, clinic_id=clinic_id, challenge=challenge, created_by=created_by,
            created_at=now, expires_at=expires_at, state=state).returning(t.capture_sessions.c.id))
        session_id: int = res.scalar_one()
        return session_id

    async def by_token(self, token_hash: str) -> StoredCaptureSession | None:
        row = (await self.conn.execute(select(t.capture_sessions)
                                       .where(t.capture_sessions.c.token_hash == token_hash))).first()
        return _capture_session(row) if row is not None else None

    async def move(self, session_id: int, from_state: str, to_state: str, *, before: dt.datetime | None = None,
                   **values: object) -> bool:
        """Move a session from one state to the next, or answer False (nothing changed) when it is no longer in
        ``from_state`` (or ``before`` has passed its expiry): one conditional UPDATE, so a token is claimed once
        however many connections race for it, on any number of server processes."""
        cs = t.capture_sessions
        where = and_(cs.c.id == session_id, cs.c.state == from_state)
        if before is not None:
            where = and_(where, cs.c.expires_at > before)
        res = await self.conn.execute(update(cs).where(where).values(state=to_state, **values))
        return res.rowcount == 1


@dataclass(frozen=True)
class CurrentCode:
    """The visit's code as a check needs it (the visit_codes row)."""
    generation: int
    code_hash: str
    expires_at: dt.datetime
    used_at: dt.datetime | None


@dataclass(frozen=True)
class CodeCheckState:
    """What a code check reads after counting its attempt: the visit's current code (None when none was issued)
    and this clock hour's wrong codes of its doctor and of its clinic."""
    code: CurrentCode | None
    doctor_failures: int
    clinic_failures: int


def _code_check_state(row: AnyRow) -> CodeCheckState:
    code = (CurrentCode(row.code_row_generation, row.code_hash, row.code_expires_at, row.code_used_at)
            if row.code_row_generation is not None else None)
    return CodeCheckState(code, row.doctor_failures or 0, row.clinic_failures or 0)


_dcf, _ccf, _vc = t.doctor_code_failures, t.clinic_code_failures, t.visit_codes
_CODE_COLUMNS = (("code_row_generation", _vc.c.generation), ("code_hash", _vc.c.code_hash),
                 ("code_expires_at", _vc.c.expires_at), ("code_used_at", _vc.c.used_at))


def _failures(doctor: ColumnElement[int]) -> tuple[ColumnElement[int], ColumnElement[int]]:
    """This hour's wrong codes of the doctor and of the clinic (parameters "clinic" and "hour")."""
    hour: ColumnElement[dt.datetime] = bindparam("hour")
    return (select(_dcf.c.failures).where(_dcf.c.doctor_id == doctor, _dcf.c.hour_start == hour)
            .scalar_subquery().label("doctor_failures"),
            select(_ccf.c.failures).where(_ccf.c.clinic_id == bindparam("clinic"), _ccf.c.hour_start == hour)
            .scalar_subquery().label("clinic_failures"))


_CODE_CHECK_STATE = (
    select(*(column.label(name) for name, column in _CODE_COLUMNS), *_failures(bindparam("doctor")))
    .select_from(t.visits.outerjoin(_vc, _vc.c.visit_id == t.visits.c.id))
    .where(t.visits.c.id == bindparam("visit")))
# The same reads as subqueries of the count's RETURNING (VisitRepo.count_code_attempt says when they are read again).
# SQLite's RETURNING is rendered with bare column names, so a subquery names the updated row's columns in full
# ("visits.id"): bare, "id" would be the subquery's own table's.
_UPDATED_VISIT: ColumnElement[int] = literal_column("visits.id")
_UPDATED_DOCTOR: ColumnElement[int] = literal_column("visits.doctor_id")
_COUNT_CODE_ATTEMPT_AND_READ = (
    update(t.visits).where(t.visits.c.id == bindparam("visit"), t.visits.c.clinic_id == bindparam("clinic"))
    .values(code_attempts=t.visits.c.code_attempts + 1)
    .returning(*t.visits.c,
               select(t.patient_changes.c.at).where(t.patient_changes.c.id == literal_column(
                   "visits.verified_enrolment_id")).scalar_subquery().label("enrolled_at"),
               exists().where(and_(t.visit_events.c.visit_id == _UPDATED_VISIT, t.visit_events.c.step == "verify",
                                   t.visit_events.c.detail == FRESH_REFERENCE)).label("fresh_reference"),
               *(select(column).where(_vc.c.visit_id == _UPDATED_VISIT).scalar_subquery().label(name)
                 for name, column in _CODE_COLUMNS),
               *_failures(_UPDATED_DOCTOR))
    .execution_options(**_POINT))


class CodeRepo(_Repo):
    async def current(self, visit_id: int) -> AnyRow | None:
        return (await self.conn.execute(select(t.visit_codes).where(t.visit_codes.c.visit_id == visit_id))).first()

    async def put(self, visit_id: int, generation: int, code_hash: str, issued_at: dt.datetime,
                  expires_at: dt.datetime) -> None:
        """Store the visit's new code, replacing (and so invalidating) any earlier one, and its generation on the
        visit's row (which this locks): what a code check that waited for that lock tells it by. ``generation`` is
        :meth:`next_generation`'s, read in the same unit under the visit's lock, the one the hash was made with
        (1: the visit has no code row yet)."""
        values = dict(generation=generation, code_hash=code_hash, issued_at=issued_at, expires_at=expires_at,
                      used_at=None)
        if generation > 1:
            await self.conn.execute(update(t.visit_codes).where(t.visit_codes.c.visit_id == visit_id).values(**values))
        else:
            await self.conn.execute(insert(t.visit_codes).values(visit_id=visit_id, **values))
        await self.conn.execute(update(t.visits).where(t.visits.c.id == visit_id).values(code_generation=generation))

    async def next_generation(self, visit_id: int) -> int:
        row = await self.current(visit_id)
        return (row.generation + 1) if row else 1

    async def doctor_failures(self, doctor_id: int, hour_start: dt.datetime) -> int:
        value = (await self.conn.execute(select(t.doctor_code_failures.c.failures).where(and_(
            t.doctor_code_failures.c.doctor_id == doctor_id, t.doctor_code_failures.c.hour_start == hour_start))
        )).scalar_one_or_none()
        return value or 0

    async def take_doctor_failure(self, doctor_id: int, hour_start: dt.datetime, cap: int) -> bool:
        """Count one wrong code against the doctor's hourly cap, or answer False (nothing counted) at the cap."""
        return await _take_below_cap(self.conn, t.doctor_code_failures,
                                     {"doctor_id": doctor_id, "hour_start": hour_start}, cap)

    async def clinic_failures(self, clinic_id: int, hour_start: dt.datetime) -> int:
        value = (await self.conn.execute(select(t.clinic_code_failures.c.failures).where(
            self._clinic_hour(clinic_id, hour_start)))).scalar_one_or_none()
        return value or 0

    async def take_clinic_failure(self, clinic_id: int, hour_start: dt.datetime, cap: int) -> bool:
        """Count one wrong code against the clinic's hourly cap, or answer False (nothing counted) at the cap;
        the clinic's right codes never wait on this row."""
        return await _take_below_cap(self.conn, t.clinic_code_failures,
                                     {"clinic_id": clinic_id, "hour_start": hour_start}, cap)

    @staticmethod
    def _clinic_hour(clinic_id: int, hour_start: dt.datetime) -> ColumnElement[bool]:
        return and_(t.clinic_code_failures.c.clinic_id == clinic_id, t.clinic_code_failures.c.hour_start == hour_start)


class FaceFailureRepo(_Repo):
    """Failed face checks per clock hour, per patient, doctor and clinic (the ``scope``)."""

    async def take(self, scope: str, subject_id: int, hour_start: dt.datetime, cap: int) -> bool:
        return await _take_below_cap(self.conn, t.face_failures_hourly,
                                     {"scope": scope, "subject_id": subject_id, "hour_start": hour_start}, cap)

    async def give_back(self, scope: str, subject_id: int, hour_start: dt.datetime) -> None:
        table = t.face_failures_hourly
        await self.conn.execute(update(table).where(and_(
            table.c.scope == scope, table.c.subject_id == subject_id, table.c.hour_start == hour_start,
            table.c.failures > 0)).values(failures=table.c.failures - 1))


async def _take_below_cap(conn: AsyncConnection, table: Table, key: dict[str, object], cap: int) -> bool:
    """Count one failure in ``table``'s row for ``key``, or answer False (nothing counted) at ``cap``.

    A conditional UPDATE (and an INSERT that yields to a concurrent one) instead of a read-then-write, so tries
    spread over visits, doctors and server processes can never push a counter past its cap."""
    where = and_(*(table.c[name] == value for name, value in key.items()), table.c.failures < cap)
    bump = update(table).where(where).values(failures=table.c.failures + 1)
    if (await conn.execute(bump)).rowcount:
        return True
    if (await conn.execute(_insert_or_ignore(conn)(table).values(**key, failures=1).on_conflict_do_nothing())).rowcount:
        return True
    return bool((await conn.execute(bump)).rowcount)  # another transaction created the row meanwhile


def _insert_or_ignore(conn: AsyncConnection) -> Callable[[Table], PostgresqlInsert | SqliteInsert]:
    """The dialect's INSERT, which knows ON CONFLICT DO NOTHING (both SQLite and PostgreSQL have it)."""
    return postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert


class OutboxRepo(_Repo):
    async def add(self, message: OutboxMessage, now: dt.datetime) -> int | None:
        """Queue a message; a repeated ``dedupe_key`` is ignored (returns None)."""
        if message.dedupe_key is not None:
            exists = (await self.conn.execute(select(t.outbox.c.id).where(
                t.outbox.c.dedupe_key == message.dedupe_key))).first()
            if exists:
                return None
        res = await self.conn.execute(insert(t.outbox).values(
            created_at=now, due_at=message.due_at, kind=message.kind.value, recipient_kind=message.recipient_kind.value,
            recipient_id=message.recipient_id, visit_id=message.visit_id,
            payload=json.dumps(message.payload, ensure_ascii=False, sort_keys=True),
            dedupe_key=message.dedupe_key).returning(t.outbox.c.id))
        message_id: int = res.scalar_one()
        return message_id

    async def claim_due(self, now: dt.datetime, worker_id: str, lease: dt.timedelta, limit: int, *,
                        payer: bool = False) -> list[AnyRow]:
        """Take up to ``limit`` due rows for this worker: pending ones whose time has come, and rows whose
        previous claim expired (a dispatcher died mid-send). PostgreSQL skips rows another dispatcher holds.
        ``payer``: the payer webhook's rows only (its sender's claim); otherwise every row but those (the chats')."""
        o = t.outbox
        due = or_(and_(o.c.status == OutboxStatus.PENDING.value, o.c.due_at <= now),
                  and_(o.c.status == OutboxStatus.SENDING.value, o.c.claim_expires_at < now))
        webhook = o.c.recipient_kind == Recipient.PAYER.value
        due = and_(due, webhook if payer else ~webhook)
        stmt = select(o.c.id).where(due).order_by(o.c.due_at, o.c.id).limit(limit)
        if self._for_update:
            stmt = stmt.with_for_update(skip_locked=True)
        ids = [r.id for r in (await self.conn.execute(stmt)).all()]
        if not ids:
            return []
        await self.conn.execute(update(o).where(o.c.id.in_(ids)).values(
            status=OutboxStatus.SENDING.value, claimed_by=worker_id, claim_expires_at=now + lease,
            attempts=o.c.attempts + 1))
        return list((await self.conn.execute(select(o).where(o.c.id.in_(ids)).order_by(o.c.due_at, o.c.id))).all())

    async def release_claims(self, worker_id: str) -> int:
        """At start: rows this worker claimed before a crash go back to the queue at once."""
        res = await self.conn.execute(update(t.outbox).where(and_(
            t.outbox.c.status == OutboxStatus.SENDING.value, t.outbox.c.claimed_by == worker_id))
            .values(status=OutboxStatus.PENDING.value, claimed_by=None, claim_expires_at=None))
        return res.rowcount

    @staticmethod
    def _claimed(message_id: int, worker_id: str | None) -> ColumnElement[bool]:
        """This row, and only while `worker_id` still holds its claim (a lapsed claim may have moved on)."""
        where = t.outbox.c.id == message_id
        return and_(where, t.outbox.c.claimed_by == worker_id) if worker_id is not None else where

    async def set_parts_sent(self, message_id: int, parts: int, *, worker_id: str | None = None) -> None:
        await self.conn.execute(update(t.outbox).where(self._claimed(message_id, worker_id)).values(parts_sent=parts))

    async def finish(self, message_id: int, status: OutboxStatus, now: dt.datetime, *, error: str | None = None,
                     chat_message_id: int | None = None, worker_id: str | None = None,
                     chat_id: int | None = None) -> bool:
        """Terminal outcome: sent | skipped | blocked | failed. False when the claim was no longer ours."""
        status = OutboxStatus(status)
        values: dict[str, object] = dict(status=status.value, claimed_by=None, claim_expires_at=None, last_error=error)
        if status is OutboxStatus.SENT:
            values.update(sent_at=now, chat_message_id=chat_message_id, chat_id=chat_id)
        res = await self.conn.execute(update(t.outbox).where(self._claimed(message_id, worker_id)).values(**values))
        return res.rowcount == 1

    async def retry_later(self, message_id: int, due_at: dt.datetime, error: str, *, failed: bool = True,
                          worker_id: str | None = None) -> bool:
        """Back to the queue; `failed` spends one unit of the retry budget. A hand-back does not, and it takes
        back its claim from the count of claims without an outcome (those mean a dispatcher died on the row)."""
        values = dict(status=OutboxStatus.PENDING.value, due_at=due_at, claimed_by=None, claim_expires_at=None,
                      last_error=error[:300])
        if failed:
            values["failures"] = t.outbox.c.failures + 1
        else:
            values["attempts"] = t.outbox.c.attempts - 1
        res = await self.conn.execute(update(t.outbox).where(self._claimed(message_id, worker_id)).values(**values))
        return res.rowcount == 1

    async def get(self, message_id: int) -> AnyRow | None:
        return (await self.conn.execute(select(t.outbox).where(t.outbox.c.id == message_id))).first()

    async def payload(self, dedupe_key: str) -> dict[str, Any] | None:
        """The payload queued under ``dedupe_key``, or None when nothing was."""
        stored = (await self.conn.execute(select(t.outbox.c.payload).where(
            t.outbox.c.dedupe_key == dedupe_key))).scalar_one_or_none()
        return json.loads(stored) if stored is not None else None

    async def pending(self, *, visit_id: int | None = None, kind: OutboxKind | None = None) -> list[AnyRow]:
        stmt = select(t.outbox).where(t.outbox.c.status == OutboxStatus.PENDING.value)
        if visit_id is not None:
            stmt = stmt.where(t.outbox.c.visit_id == visit_id)
        if kind is not None:
            stmt = stmt.where(t.outbox.c.kind == OutboxKind(kind).value)
        return list((await self.conn.execute(stmt.order_by(t.outbox.c.id))).all())

    async def by_recipient_kind(self, recipient_kind: Recipient, status: OutboxStatus | None = None) -> list[AnyRow]:
        """The rows for one kind of recipient (e.g. the payer's webhook), in one status or all, oldest first."""
        stmt = select(t.outbox).where(t.outbox.c.recipient_kind == Recipient(recipient_kind).value)
        if status is not None:
            stmt = stmt.where(t.outbox.c.status == OutboxStatus(status).value)
        return list((await self.conn.execute(stmt.order_by(t.outbox.c.id))).all())

    async def requeue_failed(self, message_id: int, recipient_kind: Recipient, now: dt.datetime) -> bool:
        """A dead letter back to the queue with a fresh retry budget (the operator fixed the receiver)."""
        res = await self.conn.execute(update(t.outbox).where(and_(
            t.outbox.c.id == message_id, t.outbox.c.status == OutboxStatus.FAILED.value,
            t.outbox.c.recipient_kind == Recipient(recipient_kind).value)).values(
            status=OutboxStatus.PENDING.value, due_at=now, failures=0, attempts=0, last_error=None))
        return res.rowcount == 1

    # chat-disputes (issue 17): backdated visits gathered into one "were you there?" per patient
    async def open_prompt_batch(self, patient_id: int, now: dt.datetime) -> AnyRow | None:
        """The patient's gathering question about backdated visits that is still waiting (pending, not due yet),
        locked, or None."""
        o = t.outbox
        stmt = select(o.c.id, o.c.payload).where(and_(
            o.c.kind == OutboxKind.ATTENDANCE_PROMPT.value, o.c.recipient_kind == Recipient.PATIENT.value,
            o.c.recipient_id == patient_id, o.c.status == OutboxStatus.PENDING.value, o.c.due_at > now,
            o.c.payload.like('{"visits": [%'))).order_by(o.c.id.desc()).limit(1)
        return (await self.conn.execute(self._locked(stmt))).first()

    async def extend_prompt_batch(self, message_id: int, visit_ids: list[int], now: dt.datetime) -> bool:
        """Put the visits in the waiting question; False when it was claimed for sending meanwhile."""
        o = t.outbox
        res = await self.conn.execute(update(o).where(and_(
            o.c.id == message_id, o.c.status == OutboxStatus.PENDING.value, o.c.due_at > now)).values(
            payload=json.dumps({"visits": visit_ids}, sort_keys=True)))
        return res.rowcount == 1



def _change(row: AnyRow) -> PatientChange:
    return PatientChange(id=row.id, patient_id=row.patient_id, clinic_id=row.clinic_id, kind=row.kind, at=row.at,
                         actor=row.actor, disputed_at=row.disputed_at)


class PatientChangeRepo(_Repo):
    async def add(self, *, patient_id: int, clinic_id: int, kind: str, at: dt.datetime, actor: str) -> int:
        res = await self.conn.execute(insert(t.patient_changes).values(
            patient_id=patient_id, clinic_id=clinic_id, kind=kind, at=at, actor=actor)
            .returning(t.patient_changes.c.id))
        change_id: int = res.scalar_one()
        return change_id

    async def get(self, change_id: int, *, lock: bool = False) -> PatientChange:
        stmt = select(t.patient_changes).where(t.patient_changes.c.id == change_id)
        row = (await self.conn.execute(self._locked(stmt) if lock else stmt)).first()
        if row is None:
            raise NotFound(f"change {change_id} not found")
        return _change(row)

    async def last_at(self, patient_id: int, kind: str) -> dt.datetime | None:
        last: dt.datetime | None = (await self.conn.execute(select(func.max(t.patient_changes.c.at)).where(and_(
            t.patient_changes.c.patient_id == patient_id, t.patient_changes.c.kind == kind)))).scalar_one()
        return last

    async def mark_disputed(self, change_id: int, at: dt.datetime) -> bool:
        """Set once: False when the change was already disputed."""
        res = await self.conn.execute(update(t.patient_changes).where(and_(
            t.patient_changes.c.id == change_id, t.patient_changes.c.disputed_at.is_(None))).values(disputed_at=at))
        return res.rowcount == 1


@dataclass(frozen=True)
class StoredApiKey:
    """An api_keys row: the key's hash, never the key. A clinic's key (clinic_id) or an auditor's (auditor_id)."""
    id: int
    clinic_id: int | None
    key_prefix: str
    key_hash: str
    scopes: tuple[str, ...]
    doctor_id: int | None
    label: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    expires_at: dt.datetime | None
    last_used_at: dt.datetime | None
    auditor_id: int | None = None


def _api_key(row: AnyRow) -> StoredApiKey:
    return StoredApiKey(id=row.id, clinic_id=row.clinic_id, key_prefix=row.key_prefix, key_hash=row.key_hash,
                        scopes=tuple(row.scopes.split(",")), doctor_id=row.doctor_id, label=row.label,
                        created_at=row.created_at, revoked_at=row.revoked_at, expires_at=row.expires_at,
                        last_used_at=row.last_used_at, auditor_id=row.auditor_id)


_KEY_BY_PREFIX = select(t.api_keys).where(t.api_keys.c.key_prefix == bindparam("prefix"))  # on every request


class ApiKeyRepo(_Repo):
    async def add(self, *, clinic_id: int | None, key_prefix: str, key_hash: str, scopes: list[str],
                  doctor_id: int | None, label: str, now: dt.datetime, expires_at: dt.datetime | None = None,
                  auditor_id: int | None = None) -> int:
        res = await self.conn.execute(insert(t.api_keys).values(
            clinic_id=clinic_id, key_prefix=key_prefix, key_hash=key_hash, scopes=",".join(sorted(scopes)),
            doctor_id=doctor_id, label=label, created_at=now, expires_at=expires_at, auditor_id=auditor_id)
            .returning(t.api_keys.c.id))
        key_id: int = res.scalar_one()
        return key_id

    async def by_prefix(self, key_prefix: str) -> StoredApiKey | None:
        row = (await self.conn.execute(_KEY_BY_PREFIX, {"prefix": key_prefix})).first()
        return _api_key(row) if row is not None else None

    async def list(self, clinic_id: int | None = None) -> list[StoredApiKey]:
        stmt = select(t.api_keys).order_by(t.api_keys.c.clinic_id, t.api_keys.c.id)
        if clinic_id is not None:
            stmt = stmt.where(t.api_keys.c.clinic_id == clinic_id)
        return [_api_key(r) for r in (await self.conn.execute(stmt)).all()]

    async def touch(self, key_id: int, now: dt.datetime, unless_since: dt.datetime) -> int:
        """Record a use, unless one was recorded at ``unless_since`` or later (then nothing is written)."""
        res = await self.conn.execute(update(t.api_keys).where(and_(
            t.api_keys.c.id == key_id,
            or_(t.api_keys.c.last_used_at.is_(None), t.api_keys.c.last_used_at < unless_since)))
            .values(last_used_at=now))
        return res.rowcount

    async def revoke(self, key_prefix: str, now: dt.datetime) -> int:
        res = await self.conn.execute(update(t.api_keys).where(and_(
            t.api_keys.c.key_prefix == key_prefix, t.api_keys.c.revoked_at.is_(None))).values(revoked_at=now))
        return res.rowcount

    async def revoke_auditors(self, auditor_id: int, now: dt.datetime) -> builtins.list[str]:
        """Revoke every live key of the auditor; the prefixes revoked."""
        res = await self.conn.execute(update(t.api_keys).where(and_(
            t.api_keys.c.auditor_id == auditor_id, t.api_keys.c.revoked_at.is_(None))).values(revoked_at=now)
            .returning(t.api_keys.c.key_prefix))
        return sorted(res.scalars().all())


@dataclass(frozen=True)
class StoredAuditor:
    """An auditors row with its scope: ``clinic_ids`` (empty when ``all_clinics``)."""
    id: int
    full_name: str
    phone: str
    language: Language
    chat_id: int | None
    all_clinics: bool
    clinic_ids: tuple[int, ...]
    created_at: dt.datetime
    removed_at: dt.datetime | None


class AuditorRepo(_Repo):
    """The payer's auditors and the clinics each reads."""

    async def add(self, *, full_name: str, phone: str, language: Language, all_clinics: bool,
                  clinic_ids: builtins.list[int], now: dt.datetime) -> int:
        res = await self.conn.execute(insert(t.auditors).values(
            full_name=full_name, phone=phone, language=language.value, all_clinics=all_clinics, created_at=now)
            .returning(t.auditors.c.id))
        auditor_id: int = res.scalar_one()
        if clinic_ids:
            await self.conn.execute(insert(t.auditor_clinics), [{"auditor_id": auditor_id, "clinic_id": clinic}
                                                               for clinic in clinic_ids])
        return auditor_id

    async def get(self, auditor_id: int) -> StoredAuditor:
        found = await self._read(t.auditors.c.id == auditor_id)
        if not found:
            raise NotFound(f"auditor {auditor_id} not found")
        return found[0]

    async def by_phone(self, phone: str) -> builtins.list[StoredAuditor]:
        return await self._read(t.auditors.c.phone == phone)

    async def list(self) -> builtins.list[StoredAuditor]:
        return await self._read(None)

    async def by_chat(self, chat_id: int) -> builtins.list[StoredAuditor]:
        """The live auditors this chat is linked to."""
        return await self._read(and_(t.auditors.c.chat_id == chat_id, t.auditors.c.removed_at.is_(None)))

    async def watching(self, clinic_id: int) -> builtins.list[StoredAuditor]:
        """The live auditors whose scope holds this clinic (listed, or every clinic)."""
        listed = select(t.auditor_clinics.c.auditor_id).where(t.auditor_clinics.c.clinic_id == clinic_id)
        return await self._read(and_(t.auditors.c.removed_at.is_(None),
                                     or_(t.auditors.c.all_clinics.is_(True), t.auditors.c.id.in_(listed))))

    async def linked(self) -> builtins.list[StoredAuditor]:
        """The live auditors with a chat: who gets the daily summary and the checkpoints."""
        return await self._read(and_(t.auditors.c.chat_id.is_not(None), t.auditors.c.removed_at.is_(None)))

    async def set_chat(self, phone: str, chat_id: int) -> int:
        """Link the live auditors with this phone to the chat (a removed auditor is never linked)."""
        res = await self.conn.execute(update(t.auditors).where(and_(
            t.auditors.c.phone == phone, t.auditors.c.removed_at.is_(None))).values(chat_id=chat_id))
        return res.rowcount

    async def unlink_chat(self, chat_id: int) -> int:
        res = await self.conn.execute(update(t.auditors).where(t.auditors.c.chat_id == chat_id).values(chat_id=None))
        return res.rowcount

    async def remove(self, auditor_id: int, now: dt.datetime) -> bool:
        """Set once: False when the auditor was already removed."""
        res = await self.conn.execute(update(t.auditors).where(and_(
            t.auditors.c.id == auditor_id, t.auditors.c.removed_at.is_(None))).values(removed_at=now))
        return res.rowcount == 1

    async def _read(self, condition: ColumnElement[bool] | None) -> builtins.list[StoredAuditor]:
        stmt = select(t.auditors).order_by(t.auditors.c.id)
        rows = (await self.conn.execute(stmt if condition is None else stmt.where(condition))).all()
        scopes: dict[int, builtins.list[int]] = {row.id: [] for row in rows}
        if scopes:
            for link in (await self.conn.execute(select(t.auditor_clinics).where(
                    t.auditor_clinics.c.auditor_id.in_(scopes)).order_by(t.auditor_clinics.c.clinic_id))).all():
                scopes[link.auditor_id].append(link.clinic_id)
        return [StoredAuditor(id=r.id, full_name=r.full_name, phone=r.phone, language=Language(r.language),
                              chat_id=r.chat_id, all_clinics=r.all_clinics, clinic_ids=tuple(scopes[r.id]),
                              created_at=r.created_at, removed_at=r.removed_at) for r in rows]


class IdempotencyRepo(_Repo):
    async def get(self, clinic_id: int, key: str) -> AnyRow | None:
        return (await self.conn.execute(select(t.idempotency_keys).where(and_(
            t.idempotency_keys.c.clinic_id == clinic_id, t.idempotency_keys.c.key == key)))).first()

    async def add(self, *, clinic_id: int, key: str, request_hash: str, status: int, body: str,
                  now: dt.datetime) -> None:
        """A concurrent twin with the same key fails here on the primary key, rolling back its whole write."""
        await self.conn.execute(insert(t.idempotency_keys).values(
            clinic_id=clinic_id, key=key, request_hash=request_hash, response_status=status, response_body=body,
            created_at=now))

_head = t.audit_head.c
# Claim ``rows`` sequence numbers of one chain and read the hash they follow; a chain's first write creates its head
# (at its genesis) in the same statement. The head row's lock, taken here, orders the chain's writers until commit.
_CLAIM_AUDIT_SEQS = {
    dialect: (insert_of(t.audit_head).values(chain=bindparam("chain"), seq=bindparam("rows", type_=Integer),
                                             last_hash=bindparam("genesis"))
              .on_conflict_do_update(index_elements=[_head.chain],
                                     set_={"seq": _head.seq + bindparam("rows", type_=Integer)})
              .returning(_head.seq, _head.last_hash).execution_options(**_POINT))
    for dialect, insert_of in (("postgresql", postgresql_insert), ("sqlite", sqlite_insert))}
_MOVE_AUDIT_HEAD = update(t.audit_head).where(_head.chain == bindparam("the_chain")).values(
    last_hash=bindparam("head_hash")).execution_options(**_POINT)
_ADD_AUDIT_ROWS = insert(t.audit_log)
type _Pending = tuple[str, str, str, str, dict[str, Any]]


def _append_audit_row_in_sql() -> Insert:
    """PostgreSQL: one row appended to a chain in one statement. The head is locked (FOR UPDATE, which in READ
    COMMITTED returns the head as the writer before left it), the row's hash is computed from it by the database
    (core.audit.hashed_content gives the rest of the hashed text), the row is inserted and the head moved to it.
    Nothing is written when the chain has no head yet (its first row takes the two-statement path). Parameters
    are named unlike any column: an UPDATE would take a parameter named as a column as one more column to set."""
    head = t.audit_head
    old = (select(head.c.chain, head.c.seq, head.c.last_hash).where(head.c.chain == bindparam("the_chain"))
           .with_for_update().cte("old"))
    seq = old.c.seq + literal_column("1")  # SQL literals, not bound values: the statement is the same every time
    hashed: ColumnElement[str] = (
        literal_column("'['") + cast(seq, String) + literal_column("','") + bindparam("content", type_=String)
        + literal_column("',\"'") + old.c.last_hash + literal_column("'\"]'"))
    new = select(old.c.chain, seq.label("seq"), old.c.last_hash.label("prev_hash"),
                 func.encode(func.sha256(func.convert_to(hashed, literal_column("'UTF8'"))),
                             literal_column("'hex'")).label("hash")).cte("new")
    moved = (update(head).where(head.c.chain == new.c.chain).values(seq=new.c.seq, last_hash=new.c.hash)
             .cte("moved"))
    log = t.audit_log
    row = select(new.c.chain, new.c.seq,
                 *(bindparam(f"row_{name}", type_=String) for name in ("at", "actor", "action", "subject", "details")),
                 new.c.prev_hash, new.c.hash)
    return (insert(log).from_select(["chain", "seq", "at", "actor", "action", "subject", "details", "prev_hash",
                                     "hash"], row).add_cte(moved).returning(log.c.seq))


_APPEND_AUDIT_ROW = _append_audit_row_in_sql()
# PostgreSQL, a verification by code: the state, its event, the code's use and the audit row in one round trip;
# answers the row's number, or NULL when the chain had no head to append after.
_AUDITED = _APPEND_AUDIT_ROW.cte("audited")
_SAVE_VERIFIED_BY_CODE_WITH_AUDIT = _SAVE_VISIT_WITH_EVENT_AND_CODE_USED.add_cte(_AUDITED).returning(
    select(_AUDITED.c.seq).scalar_subquery())
SQLITE_SHA256 = "rastau_sha256"  # the SHA-256 hex digest of a text's UTF-8: a function on every SQLite connection


def _append_audit_row_sqlite() -> Insert:
    """SQLite: one row appended after its chain's head, hashed by the database (SQLITE_SHA256, registered by the
    engine) from the head it reads, in one INSERT that returns the row's number and hash for the head to move to.
    SQLite has no data-modifying CTE, so moving the head is a second statement; its writer holds the database,
    so nothing moves the head between the two. Nothing is inserted when the chain has no head yet."""
    head = t.audit_head
    seq = head.c.seq + literal_column("1")
    hashed: ColumnElement[str] = (
        literal_column("'['") + cast(seq, String) + literal_column("','") + bindparam("content", type_=String)
        + literal_column("',\"'") + head.c.last_hash + literal_column("'\"]'"))
    row = select(head.c.chain, seq, *(bindparam(f"row_{name}", type_=String)
                                      for name in ("at", "actor", "action", "subject", "details")),
                 head.c.last_hash, getattr(func, SQLITE_SHA256)(hashed)).where(head.c.chain == bindparam("the_chain"))
    log = t.audit_log
    return (insert(log).from_select(["chain", "seq", "at", "actor", "action", "subject", "details", "prev_hash",
                                     "hash"], row).returning(log.c.seq, log.c.hash))


_APPEND_AUDIT_ROW_SQLITE = _append_audit_row_sqlite().execution_options(**_POINT)
_SET_AUDIT_HEAD = update(t.audit_head).where(_head.chain == bindparam("the_chain")).values(
    seq=bindparam("head_seq"), last_hash=bindparam("head_hash")).execution_options(**_POINT)


class AuditRepo(_Repo):
    """Appends are held until the unit of work commits, then chained in one go, chain by chain: a chain's head row
    lock (which orders that clinic's writers) is then held for two statements and the commit, not the whole
    transaction, and writers of different clinics never wait on each other."""

    def __init__(self, conn: AsyncConnection, for_update: bool):
        super().__init__(conn, for_update)
        self._pending: dict[str, list[_Pending]] = {}

    async def append(self, at: dt.datetime, actor: str, action: str, subject: str, details: dict[str, Any], *,
                     clinic_id: int | None) -> None:
        """Record one row in the chain of ``clinic_id`` (None: the record is about no single clinic, the operator's
        chain)."""
        self._pending.setdefault(audit.chain_of(clinic_id), []).append(
            (at.astimezone(dt.UTC).isoformat(), actor, action, subject, details))

    @property
    def idle(self) -> bool:
        """No row waits to be chained: one may be appended at once without changing the rows' order."""
        return not self._pending

    @staticmethod
    def row_params(chain: str, at: dt.datetime, actor: str, action: str, subject: str,
                   details: dict[str, Any]) -> dict[str, object]:
        """The parameters of a statement that appends one row to ``chain`` (_APPEND_AUDIT_ROW and its kin)."""
        stamp = at.astimezone(dt.UTC).isoformat()
        return {"the_chain": chain, "row_at": stamp, "row_actor": actor, "row_action": action,
                "row_subject": subject, "row_details": json.dumps(details, sort_keys=True, ensure_ascii=False),
                "content": audit.hashed_content(stamp, actor, action, subject, details)}

    async def flush(self) -> None:
        """Chain the pending rows after their chains' heads. Called by the unit of work just before commit; chains
        in name order, so two transactions writing the same two chains cannot deadlock."""
        pending, self._pending = self._pending, {}
        for chain in sorted(pending):
            await self._chain(chain, pending[chain])

    async def _chain(self, chain: str, pending: list[_Pending]) -> None:
        if len(pending) == 1:  # PostgreSQL: one round trip while the chain waits; SQLite: two statements, not three
            stamp, actor, action, subject, details = pending[0]
            sqlite = self.conn.dialect.name == "sqlite"
            appended = (await self.conn.execute(_APPEND_AUDIT_ROW_SQLITE if sqlite else _APPEND_AUDIT_ROW, {
                "the_chain": chain, "row_at": stamp, "row_actor": actor, "row_action": action, "row_subject": subject,
                "row_details": json.dumps(details, sort_keys=True, ensure_ascii=False),
                "content": audit.hashed_content(stamp, actor, action, subject, details)})).first()
            if appended is not None:
                if sqlite:
                    await self.conn.execute(_SET_AUDIT_HEAD, {"the_chain": chain, "head_seq": appended.seq,
                                                              "head_hash": appended.hash})
                return
        claim = _CLAIM_AUDIT_SEQS[self.conn.dialect.name]
        row = (await self.conn.execute(claim, {"chain": chain, "rows": len(pending),
                                               "genesis": audit.genesis(chain)})).one()
        seq, prev = row.seq - len(pending), row.last_hash
        rows = []
        for stamp, actor, action, subject, details in pending:
            seq += 1
            digest = audit.chain_hash(seq, stamp, actor, action, subject, details, prev)
            rows.append(dict(chain=chain, seq=seq, at=stamp, actor=actor, action=action, subject=subject,
                             details=json.dumps(details, sort_keys=True, ensure_ascii=False), prev_hash=prev,
                             hash=digest))
            prev = digest
        await self.conn.execute(_ADD_AUDIT_ROWS, rows)
        await self.conn.execute(_MOVE_AUDIT_HEAD, {"the_chain": chain, "head_hash": prev})

    async def records(self, chain: str | None = None) -> list[audit.AuditRecord]:
        """The rows of ``chain`` in order, or of every chain (chain by chain) when None."""
        stmt = select(t.audit_log).order_by(t.audit_log.c.chain, t.audit_log.c.seq)
        if chain is not None:
            stmt = stmt.where(t.audit_log.c.chain == chain)
        rows = (await self.conn.execute(stmt)).all()
        return [audit.AuditRecord(chain=r.chain, seq=r.seq, at=r.at, actor=r.actor, action=r.action,
                                  subject=r.subject, details=json.loads(r.details), prev_hash=r.prev_hash,
                                  hash=r.hash) for r in rows]

    async def heads(self) -> list[audit.ChainHead]:
        """Every chain's head, by chain name: what a checkpoint of the audit log records."""
        rows = (await self.conn.execute(select(t.audit_head).order_by(t.audit_head.c.chain))).all()
        return [audit.ChainHead(r.chain, r.seq, r.last_hash) for r in rows]

    async def chains(self) -> list[str]:
        """Every chain that has a head or a row (a head deleted while its rows stay is a chain to verify too)."""
        stmt = select(t.audit_head.c.chain).union(select(t.audit_log.c.chain).distinct())
        return sorted(r[0] for r in (await self.conn.execute(stmt)).all())


# --- red flags (issue 12): the operator's lists the rules read ------------------------------------------------------

@dataclass(frozen=True)
class DeathsWritten:
    added: int
    updated: int  # the IIN was listed with another date; the new one replaced it
    unchanged: int


class DeathListRepo(_Repo):
    _CHUNK = 500  # IINs per IN list: well under SQLite's and asyncpg's parameter limits

    async def upsert(self, deaths: dict[str, dt.date], source: str, now: dt.datetime) -> DeathsWritten:
        """Store each IIN's date of death; an IIN already listed with the same date is left as it was (a file
        imported twice changes nothing), with another date it takes the new one."""
        added = updated = unchanged = 0
        iins = builtins.list(deaths)
        for at in range(0, len(iins), self._CHUNK):
            chunk = iins[at:at + self._CHUNK]
            known = {r.iin: r.died_on for r in (await self.conn.execute(
                select(t.deaths.c.iin, t.deaths.c.died_on).where(t.deaths.c.iin.in_(chunk)))).all()}
            fresh = [dict(iin=i, died_on=deaths[i], source=source, imported_at=now) for i in chunk if i not in known]
            changed = [dict(the_iin=i, died_on=deaths[i], source=source, imported_at=now)
                       for i in chunk if i in known and known[i] != deaths[i]]
            if fresh:
                await self.conn.execute(insert(t.deaths), fresh)
            if changed:
                await self.conn.execute(update(t.deaths).where(t.deaths.c.iin == bindparam("the_iin")), changed)
            added, updated, unchanged = added + len(fresh), updated + len(changed), \
                unchanged + len(chunk) - len(fresh) - len(changed)
        return DeathsWritten(added=added, updated=updated, unchanged=unchanged)

    async def count(self) -> int:
        found: int = (await self.conn.execute(select(func.count()).select_from(t.deaths))).scalar_one()
        return found


class ServiceRuleRepo(_Repo):
    async def put(self, *, service_code: str, sex: str | None, min_age: int | None, max_age: int | None,
                  source: str, now: dt.datetime) -> bool:
        """Set a service's rule; True when it was new."""
        values = dict(sex=sex, min_age=min_age, max_age=max_age, source=source, updated_at=now)
        res = await self.conn.execute(update(t.service_rules).where(t.service_rules.c.service_code == service_code)
                                      .values(**values))
        if res.rowcount == 1:
            return False
        await self.conn.execute(insert(t.service_rules).values(service_code=service_code, **values))
        return True

    async def remove(self, service_code: str) -> bool:
        res = await self.conn.execute(delete(t.service_rules).where(t.service_rules.c.service_code == service_code))
        return res.rowcount == 1

    async def list(self) -> builtins.list[AnyRow]:
        return builtins.list((await self.conn.execute(select(t.service_rules)
                                                      .order_by(t.service_rules.c.service_code))).all())
