"""Who is who: clinics, their doctors and admins, patients with consent and enrolled face references."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from core.db.uow import UnitOfWork
from core.errors import ConsentMissing, InvalidIin, InvalidValue, NotFound, StaffPhone
from core.face_references import MAX_REFERENCES, PATIENT_KEY
from core.iin import is_reduced
from core.model import Clinic, ClinicAdmin, Doctor, Language, Patient
from core.names import clean_name
from core.services import Context
from core.services.access import CLINIC_SYSTEM, Caller, patient_for, refuse_doctor_key, visible_to
from core.services.face_keys import open_references, seal_for
from core.services.patient_changes import (
    CONSENT_RECORDED,
    FACE_ENROLLED,
    FACE_REPLACED,
    FACE_REVOKED,
    PHONE_CHANGED,
    check_replacement_allowed,
    record_change,
)


async def create_clinic(ctx: Context, name: str) -> Clinic:
    name = clean_name(name, "clinic name")
    async with ctx.uow() as uow:
        clinic = await uow.clinics.add(Clinic(id=None, name=name), ctx.clock.now())
        await uow.audit.append(ctx.clock.now(), "admin", "clinic.create", f"clinic:{clinic.id}", {},
                               clinic_id=clinic.id)
        await uow.commit()
    return clinic


STAFF_PHONE_FOR_PATIENT = ("this phone number belongs to a doctor or admin of this clinic; the patient's codes and "
                           "\"were you there?\" questions must reach the patient, so register the patient's own number")
PATIENT_PHONE_FOR_STAFF = ("this phone number belongs to a patient of this clinic; staff need their own number, or "
                           "they would receive that patient's codes and questions")


async def _staff_phone(uow: UnitOfWork, clinic_id: int, phone: str) -> bool:
    staff: list[Doctor | ClinicAdmin] = [*await uow.doctors.by_phone(phone), *await uow.admins.by_phone(phone)]
    return any(person.clinic_id == clinic_id for person in staff)


async def _patient_phone(uow: UnitOfWork, clinic_id: int, phone: str) -> bool:
    return any(patient.clinic_id == clinic_id for patient in await uow.patients.by_phone(phone))


async def add_doctor(ctx: Context, clinic_id: int, full_name: str, phone: str,
                     external_ref: str | None = None) -> Doctor:
    candidate = Doctor(id=None, clinic_id=clinic_id, full_name=clean_name(full_name), phone=phone,
                       external_ref=external_ref)
    async with ctx.uow() as uow:
        await uow.clinics.get(clinic_id)
        if await _patient_phone(uow, clinic_id, candidate.phone):
            raise StaffPhone(PATIENT_PHONE_FOR_STAFF)
        doctor = await uow.doctors.add(candidate, ctx.clock.now())
        await uow.audit.append(ctx.clock.now(), "admin", "doctor.create", f"doctor:{doctor.id}",
                               {"clinic": clinic_id}, clinic_id=clinic_id)
        await uow.commit()
    return doctor


async def add_admin(ctx: Context, clinic_id: int, full_name: str, phone: str) -> ClinicAdmin:
    candidate = ClinicAdmin(id=None, clinic_id=clinic_id, full_name=clean_name(full_name), phone=phone)
    async with ctx.uow() as uow:
        await uow.clinics.get(clinic_id)
        if await _patient_phone(uow, clinic_id, candidate.phone):
            raise StaffPhone(PATIENT_PHONE_FOR_STAFF)
        admin = await uow.admins.add(candidate, ctx.clock.now())
        await uow.audit.append(ctx.clock.now(), "admin", "clinic_admin.create", f"clinic_admin:{admin.id}",
                               {"clinic": clinic_id}, clinic_id=clinic_id)
        await uow.commit()
    return admin


@dataclass(frozen=True)
class UpsertResult:
    patient: Patient
    created: bool


async def upsert_patient(ctx: Context, clinic_id: int, iin: str, full_name: str, phone: str,
                         language: Language | str | None = None, *, caller: Caller = CLINIC_SYSTEM) -> UpsertResult:
    """Create the clinic's patient with this IIN, or update name/phone/language of the existing one (no
    language: a new patient gets ru, an existing one keeps theirs).
    A number of the clinic's own doctors or admins is refused: it would route the patient's evidence to staff.
    A new phone unlinks the chat (it must be proven again) and is told to the old chat."""
    async with ctx.uow() as uow:
        result = await _upsert(uow, clinic_id, iin, full_name, phone, language, caller, ctx.clock.now())
        await uow.commit()
    return result


async def _upsert(uow: UnitOfWork, clinic_id: int, iin: str, full_name: str, phone: str,
                  language: Language | str | None, caller: Caller, now: dt.datetime) -> UpsertResult:
    if isinstance(iin, str) and is_reduced(iin.strip()):  # only retention writes that form (issue 16)
        raise InvalidIin("IIN must contain digits only (12 digits, no spaces or letters)")
    candidate = Patient(id=None, clinic_id=clinic_id, iin=iin, full_name=clean_name(full_name), phone=phone,
                        language=Language(language or Language.RU))
    if await _staff_phone(uow, clinic_id, candidate.phone):
        raise StaffPhone(STAFF_PHONE_FOR_PATIENT)
    existing = await uow.patients.by_iin(clinic_id, candidate.iin)
    if existing is None:
        patient = await uow.patients.add(candidate, now)
        await uow.audit.append(now, caller.actor, "patient.create", f"patient:{patient.id}", {"clinic": clinic_id},
                               clinic_id=clinic_id)
        return UpsertResult(patient, True)
    if not await visible_to(uow, existing, caller):
        raise NotFound("a patient with this IIN exists but has no visit with this key's doctor; a doctor-bound key "
                       "may update only its doctor's patients")
    details: dict[str, object] = {"clinic": clinic_id}
    old_chat, old_phone = existing.chat_id, existing.phone
    moved = existing.phone != candidate.phone
    if moved:
        refuse_doctor_key(caller, "change a patient's phone number")
        existing.chat_id = None  # a new phone must be proven again in the chat
    existing.full_name, existing.phone = candidate.full_name, candidate.phone
    if language is not None:  # left out: the patient keeps the language they have (often chosen in the chat)
        existing.language = candidate.language
    await uow.patients.save(existing, now)
    if moved:
        details["change"] = await record_change(uow, existing, PHONE_CHANGED, caller, now, old_chat,
                                                phone=old_phone)
    await uow.audit.append(now, caller.actor, "patient.update", f"patient:{existing.id}", details,
                           clinic_id=clinic_id)
    return UpsertResult(existing, False)


async def record_consent(ctx: Context, clinic_id: int, patient_id: int, recorded_by: str, *,
                         caller: Caller = CLINIC_SYSTEM) -> Patient:
    async with ctx.uow() as uow:
        patient = await patient_for(uow, clinic_id, patient_id, caller)
        await _consent(uow, patient, recorded_by, caller, ctx.clock.now())
        await uow.commit()
    return patient


async def _consent(uow: UnitOfWork, patient: Patient, recorded_by: str, caller: Caller, now: dt.datetime) -> None:
    patient.record_consent(recorded_by, now)
    await uow.patients.save(patient, now)
    change = await record_change(uow, patient, CONSENT_RECORDED, caller, now, patient.chat_id)
    await uow.audit.append(now, caller.actor, "patient.consent", f"patient:{patient.id}",
                           {"recorded_by": patient.consent_by, "change": change}, clinic_id=patient.clinic_id)


async def check_enrolment_allowed(ctx: Context, clinic_id: int, patient_id: int, *,
                                  caller: Caller = CLINIC_SYSTEM) -> None:
    """Refuse before any photo is read or analysed: a patient the caller cannot see (NotFound), a doctor-bound
    caller, no consent on record, or a replacement within the limit."""
    async with ctx.uow(read_only=True) as uow:
        patient = await patient_for(uow, clinic_id, patient_id, caller)
        await _enrolment_kind(uow, ctx, patient, caller, ctx.clock.now())


async def _enrolment_kind(uow: UnitOfWork, ctx: Context, patient: Patient, caller: Caller,
                          now: dt.datetime) -> str:
    """face_enrolled or face_replaced, or the reason this enrolment is refused."""
    refuse_doctor_key(caller, "enrol a patient's face")
    if patient.consent_at is None:
        raise ConsentMissing(f"patient {patient.id} has no recorded consent; record consent before enrolling")
    assert patient.id is not None, "a patient read from storage"
    if not await uow.templates.ever_enrolled(patient.id):
        return FACE_ENROLLED
    await check_replacement_allowed(uow, ctx.settings, patient.id, now)
    return FACE_REPLACED


async def enrol_face(ctx: Context, clinic_id: int, patient_id: int, encodings: list[tuple[float, ...]], *,
                     caller: Caller = CLINIC_SYSTEM) -> int:
    """Replace the patient's references with these encodings (1-5). Consent must be on record; a replacement
    is limited per patient; the patient's chat is told."""
    async with ctx.uow() as uow:
        patient = await patient_for(uow, clinic_id, patient_id, caller)
        count = await _enrol(uow, ctx, patient, encodings, caller, ctx.clock.now())
        await uow.commit()
    return count


async def _enrol(uow: UnitOfWork, ctx: Context, patient: Patient, encodings: list[tuple[float, ...]], caller: Caller,
                 now: dt.datetime) -> int:
    if not 1 <= len(encodings) <= MAX_REFERENCES:
        raise InvalidValue(f"enrol between 1 and {MAX_REFERENCES} reference faces, got {len(encodings)}")
    kind = await _enrolment_kind(uow, ctx, patient, caller, now)
    change = await record_change(uow, patient, kind, caller, now, patient.chat_id)
    assert patient.id is not None, "a patient read from storage"
    sealed = await seal_for(ctx, patient.id, encodings, now)  # under the patient's own key (crypto-shredding)
    count = await uow.templates.replace(patient.id, sealed, now, enrolment_id=change, key_version=PATIENT_KEY)
    await uow.audit.append(now, caller.actor, "patient.enrol", f"patient:{patient.id}",
                           {"references": count, "change": change}, clinic_id=patient.clinic_id)
    return count


async def enrol_patient(ctx: Context, clinic_id: int, iin: str, full_name: str, phone: str,
                        language: Language | str | None, consent_by: str, encodings: list[tuple[float, ...]], *,
                        caller: Caller) -> Patient:
    """One row of a bulk enrolment, all or nothing: the patient, the consent and the references in one
    transaction, so a refused enrolment leaves no phone change or consent behind."""
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        patient = (await _upsert(uow, clinic_id, iin, full_name, phone, language, caller, now)).patient
        await _consent(uow, patient, consent_by, caller, now)
        await _enrol(uow, ctx, patient, encodings, caller, now)
        await uow.commit()
    return patient


async def revoke_face(ctx: Context, clinic_id: int, patient_id: int, *, caller: Caller = CLINIC_SYSTEM) -> int:
    """Withdraw every reference (never limited); the patient's chat is told when there was one."""
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        patient = await patient_for(uow, clinic_id, patient_id, caller)
        refuse_doctor_key(caller, "revoke a patient's face")
        count = await uow.templates.revoke_all(patient_id, now)
        details: dict[str, object] = {"revoked": count}
        if count:
            details["change"] = await record_change(uow, patient, FACE_REVOKED, caller, now, patient.chat_id)
        await uow.audit.append(now, caller.actor, "patient.revoke_enrolment", f"patient:{patient_id}", details,
                               clinic_id=patient.clinic_id)
        await uow.commit()
    return count


async def face_references(ctx: Context, patient_id: int) -> list[tuple[float, ...]]:
    """Decrypted active references. A row that fails to decrypt raises: it was moved or tampered with."""
    async with ctx.uow() as uow:
        refs = await uow.templates.active_references(patient_id)
    return [opened.encoding for opened in await open_references(ctx, patient_id, refs)]
