"""Who is acting, and what they may touch: the doctor-scoping rule, decided here once for every use case.

A caller bound to one doctor (an API key on that doctor's desk, or the doctor's own chat) sees only that doctor's
visits and the patients who have had a visit with that doctor; anything else answers NotFound, as if absent, so a key
cannot learn what exists. It may not enrol or revoke faces, nor move a patient's phone (DoctorKeyForbidden).
Which clinic a caller acts for is the ``clinic_id`` every service takes; which endpoints a key may call at all
(its scopes) is the server's routing decision.

An auditor's key acts for no clinic: it reads the clinics in its auditor's scope, and a clinic outside it answers
NotFound as another clinic's records do (:func:`audited_clinics`). It writes nothing: its one scope, ``audit``,
opens only read routes (server.auth refuses every other route with 403 ``auditor_read_only``).
"""
from __future__ import annotations

from dataclasses import dataclass

from core.db.uow import UnitOfWork
from core.errors import DomainError, NotFound
from core.model import Patient, Visit
from core.services.api_keys import ApiPrincipal, AuditorPrincipal


@dataclass(frozen=True)
class Caller:
    """Who asks: written as the actor of patient changes and audit rows, and the doctor it is bound to (if any)."""
    actor: str
    doctor_id: int | None = None
    auditor_id: int | None = None
    auditor_clinics: frozenset[int] | None = None  # an auditor's clinics; None for an auditor: every clinic

    @classmethod
    def of_key(cls, principal: ApiPrincipal) -> Caller:
        return cls(f"key:{principal.key_prefix}", principal.doctor_id)

    @classmethod
    def of_auditor_key(cls, principal: AuditorPrincipal) -> Caller:
        """An auditor's key: named in the audit rows of its reads as the auditor and the key."""
        return cls(f"auditor:{principal.auditor_id}:key:{principal.key_prefix}", auditor_id=principal.auditor_id,
                   auditor_clinics=principal.clinic_ids)

    @classmethod
    def of_doctor_chat(cls, doctor_id: int) -> Caller:
        """A doctor in the bot: bound to themselves."""
        return cls(f"chat:doctor:{doctor_id}", doctor_id)

    def sees_doctor(self, doctor_id: int) -> bool:
        return self.doctor_id is None or self.doctor_id == doctor_id


CLINIC_SYSTEM = Caller("clinic_system")  # calls made in-process without a key (the demo, benchmarks, tests)
BULK_ENROL = Caller("cli:rastau-enrol")


class DoctorKeyForbidden(DomainError):
    code = "doctor_key_forbidden"


class NotAnAuditor(DomainError):
    code = "not_an_auditor"


def audited_clinics(caller: Caller, clinic_id: int | None) -> frozenset[int] | None:
    """The clinics an auditor's read covers: the one named (NotFound outside the auditor's scope, as if absent), or
    every clinic in scope (None: every clinic). Only an auditor reads across clinics (NotAnAuditor otherwise)."""
    if caller.auditor_id is None:
        raise NotAnAuditor("only an auditor's key reads the evidence of clinics")
    if clinic_id is None:
        return caller.auditor_clinics
    if caller.auditor_clinics is not None and clinic_id not in caller.auditor_clinics:
        raise NotFound(f"clinic {clinic_id} not found")
    return frozenset({clinic_id})


def check_doctor(caller: Caller, doctor_id: int) -> None:
    """A bound caller names only its own doctor (a visit for anyone else's answers as if that doctor were absent)."""
    if not caller.sees_doctor(doctor_id):
        raise NotFound(f"doctor {doctor_id} not found")


def check_visit(caller: Caller, visit: Visit) -> Visit:
    if not caller.sees_doctor(visit.doctor_id):
        raise NotFound(f"visit {visit.id} not found")
    return visit


async def patient_for(uow: UnitOfWork, clinic_id: int, patient_id: int, caller: Caller) -> Patient:
    """The clinic's patient (locked for the change); a bound caller sees only a patient who has had a visit with its
    doctor, anyone else answers NotFound as if absent."""
    patient = await uow.patients.get(patient_id, clinic_id)
    if not await visible_to(uow, patient, caller):
        raise NotFound(f"patient {patient_id} not found")
    return patient


async def visible_to(uow: UnitOfWork, patient: Patient, caller: Caller) -> bool:
    assert patient.id is not None, "a patient read from storage"
    return caller.doctor_id is None or await uow.visits.any_between(patient.id, caller.doctor_id)


def refuse_doctor_key(caller: Caller, what: str) -> None:
    if caller.doctor_id is not None:
        raise DoctorKeyForbidden(f"a key bound to one doctor cannot {what}; the clinic's own system (a key not "
                                 "bound to a doctor) or rastau-enrol must do it")
