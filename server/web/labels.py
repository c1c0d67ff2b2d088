"""The dashboard's names for the domain's values (msgids of the "web" domain), shared by pages and CSV files."""
from __future__ import annotations

from core.model import PatientAnswer, VerificationMethod, VisitMode, VisitState
from server.web.i18n import N_

MODE = {VisitMode.IN_PERSON: N_("in person"), VisitMode.ONLINE: N_("online")}
STATE = {
    VisitState.SCHEDULED: N_("scheduled"),
    VisitState.VERIFIED: N_("verified"),
    VisitState.UNVERIFIED: N_("not verified"),
    VisitState.PATIENT_CONFIRMED: N_("confirmed by the patient"),
    VisitState.PATIENT_DISPUTED: N_("disputed by the patient"),
    VisitState.CANCELLED: N_("cancelled"),
}
METHOD = {VerificationMethod.FACE: N_("photo"), VerificationMethod.FACE_LIVE: N_("live camera check"),
          VerificationMethod.CODE: N_("one-time code")}
ANSWER = {PatientAnswer.CONFIRMED: N_("was there"), PatientAnswer.DISPUTED: N_("was not there"),
          PatientAnswer.CLAIMED_ATTENDED: N_("says they were there"), PatientAnswer.NONE: N_("no answer")}
# A visit's timeline (core.services.web_day.TimelineStep.step)
STEP = {
    "registered": N_("Registered by the clinic"),
    "code_requested": N_("Code requested"),
    "code_issued": N_("Code issued"),
    "code_sent": N_("Code sent to the patient"),
    "capture_open": N_("Camera check opened"),
    "face_attempt": N_("Face checked"),
    "verified": N_("Verified"),
    "closed_unverified": N_("Closed without verification"),
    "cancelled": N_("Cancelled"),
    "asked": N_("Patient asked: were you there?"),
    "confirmed": N_("Patient answered: I was there"),
    "disputed": N_("Patient answered: I was not there"),
    "claimed_attended": N_("Patient says they were there"),
}
