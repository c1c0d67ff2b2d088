"""Who is who: clinics, their doctors and admins, patients with consent and enrolled face references."""
from __future__ import annotations

from dataclasses import dataclass

from core.errors import ConsentMissing, InvalidValue, StaffPhone
from core.model import Clinic, ClinicAdmin, Doctor, Language, Patient
from core.services import Context
from core.templates import MAX_REFERENCES


async def create_clinic(ctx: Context, name: str) -> Clinic:
    if not name or not name.strip():
        raise InvalidValue("clinic name is empty")
    async with ctx.uow() as uow:
        clinic = await uow.clinics.add(Clinic(id=None, name=name.strip()), ctx.clock.now())
        await uow.audit.append(ctx.clock.now(), "admin", "clinic.create", f"clinic:{clinic.id}", {})
        await uow.commit()
    return clinic


STAFF_PHONE_FOR_PATIENT = ("this phone number belongs to a doctor or admin of this clinic; the patient's codes and "
                           "\"were you there?\" questions must reach the patient, so register the patient's own number")
PATIENT_PHONE_FOR_STAFF = ("this phone number belongs to a patient of this clinic; staff need their own number, or "
                           "they would receive that patient's codes and questions")


async def _staff_phone(uow, clinic_id: int, phone: str) -> bool:
    staff = [*await uow.doctors.by_phone(phone), *await uow.admins.by_phone(phone)]
    return any(person.clinic_id == clinic_id for person in staff)


async def _patient_phone(uow, clinic_id: int, phone: str) -> bool:
    return any(patient.clinic_id == clinic_id for patient in await uow.patients.by_phone(phone))


async def add_doctor(ctx: Context, clinic_id: int, full_name: str, phone: str,
                     external_ref: str | None = None) -> Doctor:
    candidate = Doctor(id=None, clinic_id=clinic_id, full_name=full_name.strip(), phone=phone,
                       external_ref=external_ref)
    async with ctx.uow() as uow:
        await uow.clinics.get(clinic_id)
        if await _patient_phone(uow, clinic_id, candidate.phone):
            raise StaffPhone(PATIENT_PHONE_FOR_STAFF)
        doctor = await uow.doctors.add(candidate, ctx.clock.now())
        await uow.audit.append(ctx.clock.now(), "admin", "doctor.create", f"doctor:{doctor.id}",
                               {"clinic": clinic_id})
        await uow.commit()
    return doctor


async def add_admin(ctx: Context, clinic_id: int, full_name: str, phone: str) -> ClinicAdmin:
    candidate = ClinicAdmin(id=None, clinic_id=clinic_id, full_name=full_name.strip(), phone=phone)
    async with ctx.uow() as uow:
        await uow.clinics.get(clinic_id)
        if await _patient_phone(uow, clinic_id, candidate.phone):
            raise StaffPhone(PATIENT_PHONE_FOR_STAFF)
        admin = await uow.admins.add(candidate, ctx.clock.now())
        await uow.audit.append(ctx.clock.now(), "admin", "clinic_admin.create", f"clinic_admin:{admin.id}",
                               {"clinic": clinic_id})
        await uow.commit()
    return admin


@dataclass(frozen=True)
class UpsertResult:
    patient: Patient
    created: bool


async def upsert_patient(ctx: Context, clinic_id: int, iin: str, full_name: str, phone: str,
                         language: Language | str = Language.RU) -> UpsertResult:
    """Create the clinic's patient with this IIN, or update name/phone/language of the existing one.
    A number of the clinic's own doctors or admins is refused: it would route the patient's evidence to staff."""
    candidate = Patient(id=None, clinic_id=clinic_id, iin=iin, full_name=(full_name or "").strip(), phone=phone,
                        language=Language(language))
    if not candidate.full_name:
        raise InvalidValue("patient full name is empty")
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        if await _staff_phone(uow, clinic_id, candidate.phone):
            raise StaffPhone(STAFF_PHONE_FOR_PATIENT)
        existing = await uow.patients.by_iin(clinic_id, candidate.iin)
        if existing is None:
            patient, created = await uow.patients.add(candidate, now), True
        else:
            if existing.phone != candidate.phone:
                existing.chat_id = None  # a new phone must be proven again in the chat
            existing.full_name, existing.phone, existing.language = (candidate.full_name, candidate.phone,
                                                                     candidate.language)
            await uow.patients.save(existing, now)
            patient, created = existing, False
        await uow.audit.append(now, "clinic_system", "patient.create" if created else "patient.update",
                               f"patient:{patient.id}", {"clinic": clinic_id})
        await uow.commit()
    return UpsertResult(patient, created)


async def record_consent(ctx: Context, clinic_id: int, patient_id: int, recorded_by: str) -> Patient:
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        patient = await uow.patients.get(patient_id, clinic_id)
        patient.record_consent(recorded_by, now)
        await uow.patients.save(patient, now)
        await uow.audit.append(now, "clinic_system", "patient.consent", f"patient:{patient_id}",
                               {"recorded_by": patient.consent_by})
        await uow.commit()
    return patient


async def check_enrolment_allowed(ctx: Context, clinic_id: int, patient_id: int) -> None:
    """Refuse before any photo is read or analysed: unknown patient (NotFound) or no consent on record."""
    async with ctx.uow(read_only=True) as uow:
        patient = await uow.patients.get(patient_id, clinic_id)
    if patient.consent_at is None:
        raise ConsentMissing(f"patient {patient_id} has no recorded consent; record consent before enrolling")


async def enrol_face(ctx: Context, clinic_id: int, patient_id: int,
                     encodings: list[tuple[float, ...]]) -> int:
    """Replace the patient's references with these encodings (1-5). Consent must be on record."""
    if not 1 <= len(encodings) <= MAX_REFERENCES:
        raise InvalidValue(f"enrol between 1 and {MAX_REFERENCES} reference faces, got {len(encodings)}")
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        patient = await uow.patients.get(patient_id, clinic_id)
        if patient.consent_at is None:
            raise ConsentMissing(f"patient {patient_id} has no recorded consent; record consent before enrolling")
        sealed = [ctx.cipher.seal(patient_id, enc) for enc in encodings]
        count = await uow.templates.replace(patient_id, sealed, now)
        await uow.audit.append(now, "clinic_system", "patient.enrol", f"patient:{patient_id}",
                               {"references": count})
        await uow.commit()
    return count


async def revoke_face(ctx: Context, clinic_id: int, patient_id: int) -> int:
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        await uow.patients.get(patient_id, clinic_id)
        count = await uow.templates.revoke_all(patient_id, now)
        await uow.audit.append(now, "clinic_system", "patient.revoke_enrolment", f"patient:{patient_id}",
                               {"revoked": count})
        await uow.commit()
    return count


async def face_references(ctx: Context, patient_id: int) -> list[tuple[float, ...]]:
    """Decrypted active references. A row that fails to decrypt raises: it was moved or tampered with."""
    async with ctx.uow() as uow:
        sealed = await uow.templates.active(patient_id)
    return [ctx.cipher.open(patient_id, blob) for blob in sealed]
