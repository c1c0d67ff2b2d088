"""The patient's own record, from the chat (issue 16): /mydata, /withdraw and /unlink.

Everything here is keyed by the chat: the patient rows linked to it (a family phone links several), read by their
ids only. Nothing is reached by a name or an IIN, so a namesake at another clinic never shows.

/withdraw is the patient's alone: there is no API route for it, so a clinic cannot "withdraw" for a patient to make
face evidence disappear. It destroys the patients' own keys first (core/db/keystore.py), so from that moment no
reference of theirs opens anywhere, even from a copy of the database taken before; then it empties the ciphertexts,
clears the consent, records the change (audit-logged in the clinic's chain) and tells the clinic's admins, its
auditors and the payer. Past visits and their evidence stay as they were: they are billing records. A new enrolment
needs a new consent recorded by the clinic, and the patient's chat hears of both (core/services/patient_changes.py).
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
from dataclasses import asdict, dataclass, field

from core.audit import chain_of
from core.errors import NotFound
from core.model import OutboxKind, Patient, VisitState, patient_answer
from core.services import Context
from core.services.access import Caller
from core.services.alerts import tell_watchers
from core.services.patient_changes import CONSENT_WITHDRAWN, PHONE_CHANGED, record_change

LAST_VISITS = 10
RECENT_PHONE_CHANGE = dt.timedelta(days=30)
UNLINKED = "the patient unlinked in the chat"  # a withdrawal this soon after a phone change is pointed out
PATIENT = Caller("patient")


@dataclass(frozen=True)
class Look:
    """Someone who read or changed the record: their role (clinic, admin, auditor), what, when (UTC)."""
    role: str
    action: str
    at: dt.datetime


@dataclass(frozen=True)
class VisitLine:
    visit_id: int
    clinic: str
    start: dt.datetime
    mode: str
    state: str
    evidence: str | None
    answer: str


@dataclass(frozen=True)
class ChangeLine:
    kind: str
    clinic: str
    at: dt.datetime
    by: str
    disputed: bool


@dataclass(frozen=True)
class PatientRecord:
    patient_id: int
    full_name: str
    clinic: str
    phone: str
    registered_at: dt.datetime | None
    language: str
    channels: list[str]
    face_photos: int
    face_stored_at: dt.datetime | None
    face_enrolled_by: str | None  # the clinic whose enrolment made the references
    consent_at: dt.datetime | None
    consent_by: str | None
    withdrawn_at: dt.datetime | None
    changes: list[ChangeLine] = field(default_factory=list)
    visits: list[VisitLine] = field(default_factory=list)
    looks: list[Look] = field(default_factory=list)


def _role(actor: str, action: str = "") -> str:
    """Who an audit row's actor is, in the words /mydata uses."""
    if "auditor" in actor:
        return "auditor"
    if actor == "admin":  # the operator's command line, except on a visit, where it is the clinic's admin
        return "clinic_admin" if action.startswith("visit.") else "operator"
    if "admin" in actor:
        return "clinic_admin"
    if "doctor" in actor:
        return "doctor"
    if actor in ("patient", "chat_user"):
        return "patient"
    if actor in ("scheduler", "retention"):
        return "retention" if actor == "retention" else "rastau"
    return "clinic_system"  # the clinic's information system, through its key


async def my_record(ctx: Context, chat_id: int) -> list[PatientRecord]:
    """What Rastau holds about each patient linked to this chat; [] when the chat is no patient's."""
    async with ctx.uow(read_only=True) as uow:
        patients = await uow.patients.by_chat(chat_id)
        if not patients:
            return []
        ids = [p.id for p in patients if p.id is not None]
        names = await uow.queries.clinic_names({p.clinic_id for p in patients})
        refs = {r.patient_id: r for r in await uow.record.references(ids)}
        changes = await uow.record.changes(ids)
        visits = await uow.record.last_visits(ids, LAST_VISITS * len(ids))
        owners = await uow.record.visit_owners(ids)
        chains = sorted({chain_of(p.clinic_id) for p in patients})
        subjects = [f"patient:{i}" for i in ids] + [f"visit:{v}" for v in owners]
        about = await uow.record.audit_about(chains, subjects)
        reads = await uow.record.auditor_reads(chains)
        channels = await uow.record.channels(ids)
    records = []
    for p in patients:
        assert p.id is not None, "a patient read from storage"
        mine = [c for c in changes if c.patient_id == p.id]
        enrolments = [c for c in mine if c.kind in ("face_enrolled", "face_replaced")]
        withdrawals = [c.at for c in mine if c.kind == CONSENT_WITHDRAWN]
        created = next((dt.datetime.fromisoformat(a.at) for a in about
                        if a.subject == f"patient:{p.id}" and a.action == "patient.create"), None)
        ref = refs.get(p.id)
        looks = [Look(_role(a.actor, a.action), a.action, dt.datetime.fromisoformat(a.at)) for a in about
                 if a.subject == f"patient:{p.id}" or owners.get(_visit_id(a.subject)) == p.id]
        looks += [Look("auditor", a.action, dt.datetime.fromisoformat(a.at)) for a in reads
                  if a.chain == chain_of(p.clinic_id)]
        records.append(PatientRecord(
            patient_id=p.id, full_name=p.full_name, clinic=names.get(p.clinic_id, ""), phone=p.phone,
            registered_at=created, language=p.language.value,
            channels=(["telegram"] if p.chat_id is not None else [])
            + [c.channel for c in channels if c.patient_id == p.id and c.gone_at is None and c.channel != "telegram"],
            face_photos=int(ref.photos) if ref else 0, face_stored_at=ref.stored_at if ref else None,
            face_enrolled_by=enrolments[-1].clinic if ref and enrolments else None,
            consent_at=p.consent_at, consent_by=p.consent_by,
            withdrawn_at=withdrawals[-1] if withdrawals and p.consent_at is None else None,
            changes=[ChangeLine(c.kind, c.clinic, c.at, _role(c.actor), c.disputed_at is not None) for c in mine],
            visits=[VisitLine(v.id, v.clinic, v.start_at, v.mode, v.state, v.verified_by,
                              patient_answer(VisitState(v.state), v.attended_claim_at).value)
                    for v in visits if v.patient_id == p.id][:LAST_VISITS],
            looks=sorted(looks, key=lambda look: look.at)))
    return records


def _visit_id(subject: str) -> int:
    kind, _, rest = subject.partition(":")
    return int(rest) if kind == "visit" and rest.isdigit() else -1


def _jsonable(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def record_json(records: list[PatientRecord]) -> bytes:
    """The whole record as JSON (UTC times), the copy /mydata sends on request."""
    return json.dumps({"patients": [_jsonable(asdict(r)) for r in records]}, ensure_ascii=False,
                      indent=2).encode()


def record_csv(records: list[PatientRecord]) -> bytes:
    """One line per fact: patient, section, what, when (UTC), detail."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["patient_id", "section", "what", "at_utc", "detail"])
    for r in records:
        w.writerow([r.patient_id, "person", "name", "", r.full_name])
        w.writerow([r.patient_id, "person", "clinic", _jsonable(r.registered_at) or "", r.clinic])
        w.writerow([r.patient_id, "person", "phone", "", r.phone])
        w.writerow([r.patient_id, "person", "channels", "", " ".join(r.channels)])
        w.writerow([r.patient_id, "face", "photos", _jsonable(r.face_stored_at) or "", r.face_photos])
        w.writerow([r.patient_id, "consent", "recorded", _jsonable(r.consent_at) or "", r.consent_by or ""])
        if r.withdrawn_at:
            w.writerow([r.patient_id, "consent", "withdrawn", _jsonable(r.withdrawn_at), ""])
        for c in r.changes:
            w.writerow([r.patient_id, "change", c.kind, _jsonable(c.at), f"{c.clinic}; {c.by}"])
        for v in r.visits:
            w.writerow([r.patient_id, "visit", v.visit_id, _jsonable(v.start), f"{v.clinic}; {v.mode}; {v.state}; "
                        f"{v.evidence or '-'}; {v.answer}"])
        for look in r.looks:
            w.writerow([r.patient_id, "looked", look.role, _jsonable(look.at), look.action])
    return out.getvalue().encode("utf-8-sig")


@dataclass(frozen=True)
class Withdrawal:
    patients: int
    references: int  # ciphertexts emptied
    keys: int  # patient keys destroyed


async def withdraw_consent(ctx: Context, chat_id: int) -> Withdrawal:
    """/withdraw, confirmed: for every patient linked to this chat. NotFound when the chat is no patient's."""
    async with ctx.uow(read_only=True) as uow:
        ids = [p.id for p in await uow.patients.by_chat(chat_id) if p.id is not None]
    if not ids:
        raise NotFound("this chat is linked to no patient")
    keys = await ctx.keys.destroy(ids)  # first: from here on nothing of theirs opens, whatever fails next
    now = ctx.clock.now()
    shredded = 0
    async with ctx.uow() as uow:
        patients: list[Patient] = [p for p in await uow.patients.by_chat(chat_id) if p.id in ids]
        for p in patients:
            assert p.id is not None, "a patient read from storage"
            count = await uow.templates.shred([p.id], now)
            shredded += count
            had_consent = p.consent_at is not None
            p.consent_at, p.consent_by = None, None
            await uow.patients.save(p, now)
            change = await record_change(uow, p, CONSENT_WITHDRAWN, PATIENT, now, None)
            # a clinic that moved the patient's phone to a number it holds could /withdraw from its own chat: the
            # auditors and the payer see how recent the phone change was (the old chat was told of it)
            moved = await uow.patient_changes.last_at(p.id, PHONE_CHANGED)
            recent = moved is not None and now - moved < RECENT_PHONE_CHANGE
            details: dict[str, object] = {"references": count, "had_consent": had_consent, "change": change}
            if recent:
                details["phone_changed_at"] = moved.isoformat() if moved else None
            await uow.audit.append(now, PATIENT.actor, "patient.withdraw_consent", f"patient:{p.id}", details,
                                   clinic_id=p.clinic_id)
            await tell_watchers(uow, ctx.settings, clinic_id=p.clinic_id, kind=OutboxKind.CONSENT_WITHDRAWN_NOTICE,
                                key=f"consent-withdrawn:{change}", now=now, payload={"change_id": change},
                                event=("consent.withdrawn", {"change_id": change, "clinic_id": p.clinic_id,
                                                             "patient_id": p.id, "references": count,
                                                             "after_phone_change": recent}))
        await uow.commit()
    return Withdrawal(len(ids), shredded, keys)


async def unlink_chat(ctx: Context, chat_id: int) -> int:
    """/unlink, confirmed: the chat id is forgotten everywhere (patient rows, the chat's settings, the payloads of
    the messages queued or sent to it); nothing more is sent to it. Visits stay. How many patient rows it left."""
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        patients = await uow.patients.by_chat(chat_id)
        ids = [p.id for p in patients if p.id is not None]
        unlinked = await uow.patients.unlink_chat(chat_id)
        forgotten = await uow.retention.forget_chat(chat_id, ids)
        await uow.retention.stop_channels(ids, now)  # "stop all messages": WhatsApp and SMS too (issue 14)
        for p in patients:  # a registered phone is an SMS channel until marked gone at that number
            if p.id is not None and p.phone:
                await uow.channels.mark_gone(p.id, "sms", p.phone, now, UNLINKED)
        await uow.audit.append(now, "chat_user", "chat.unlink", "chat:unlinked",
                               {"patients": unlinked, "messages_forgotten": forgotten}, clinic_id=None)
        for p in patients:
            await uow.audit.append(now, PATIENT.actor, "patient.unlink_chat", f"patient:{p.id}", {},
                                   clinic_id=p.clinic_id)
        await uow.commit()
    return unlinked
