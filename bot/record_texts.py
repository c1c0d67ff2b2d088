"""What the bot says about the patient's own record (issue 16): /mydata, /withdraw, /unlink, and the admins' notice
of a withdrawal. Built in the current locale, as :mod:`bot.texts`; every dynamic value is HTML-escaped."""
from __future__ import annotations

import datetime as dt

from bot.i18n import _, __, when
from bot.texts import MAX_TEXT, locale, q
from core.services.patient_record import PatientRecord

MAX_LOOKS = 10
CHANNEL_NAMES = {"whatsapp": "WhatsApp", "sms": "SMS"}  # names, never translated

EVIDENCE = {"face": __("face, single frame"), "face_live": __("face, live check"), "code": __("one-time code")}
ANSWER = {"confirmed": __("you said you were there"), "disputed": __("you said you were not there"),
          "claimed_attended": __("you said you were there, the clinic did not confirm it"),
          "none": __("no answer")}
ROLE = {"clinic_system": __("the clinic's information system"), "clinic_admin": __("a clinic administrator"),
        "doctor": __("a doctor"), "auditor": __("an auditor of the payer"), "operator": __("the Rastau operator"),
        "patient": __("you"), "retention": __("Rastau, by its retention rules"), "rastau": __("Rastau itself")}
# what an audit row about the patient did, in plain words (an action not listed shows the role alone)
ACTION = {"patient.create": __("registered you"), "patient.update": __("updated your name, phone or language"),
          "patient.consent": __("consent recorded"), "patient.enrol": __("face saved"),
          "patient.revoke_enrolment": __("face deleted"), "patient.withdraw_consent": __("consent withdrawn by you"),
          "patient.unlink_chat": __("chat disconnected"), "patient_change.dispute": __("you disputed a change"),
          "dispute.review": __("reviewed your dispute"), "visit.register": __("registered a visit"),
          "visit.verify": __("confirmed that a visit took place"), "visit.cancel": __("cancelled a visit"),
          "visit.close_unverified": __("closed a visit with no evidence"),
          "visit.patient_confirm": __("you answered about a visit"),
          "visit.patient_dispute": __("you answered about a visit"),
          "visit.code_issued": __("sent you a visit's code"), "visit.face_attempt": __("checked your face at a visit")}
AUDITOR_READ = __("read the clinic's visit records")

def _when(moment: dt.datetime | None) -> str:
    return when(moment, locale()) if moment is not None else ""


def record(r: PatientRecord, *, family: bool) -> str:
    """One patient's record as a message: plain words, no raw data."""
    lines = [_("<b>What Rastau keeps about {name}</b>").format(name=q(r.full_name)) if family
             else _("<b>What Rastau keeps about you</b>")]
    if r.registered_at:
        lines.append(_("Registered by: {clinic}, {when}").format(clinic=q(r.clinic), when=_when(r.registered_at)))
    else:
        lines.append(_("Registered by: {clinic}").format(clinic=q(r.clinic)))
    lines.append(_("Phone: {phone}").format(phone=q(r.phone)))
    lines.append(_("Messages come to: this Telegram chat") if "telegram" in r.channels
                 else _("Messages come to: nowhere yet"))
    others = [CHANNEL_NAMES.get(c, c) for c in r.channels if c != "telegram"]
    if others:
        lines.append(_("Also by: {channels}").format(channels=", ".join(others)))
    if r.face_photos:
        lines.append(_("Face: saved by {clinic}, {when}; photos: {n}. Only encrypted numbers computed from the "
                       "photos are kept, never the photos.").format(
            clinic=q(r.face_enrolled_by or r.clinic), when=_when(r.face_stored_at), n=r.face_photos))
    elif r.withdrawn_at:
        lines.append(_("Face: destroyed at your request, {when}.").format(when=_when(r.withdrawn_at)))
    else:
        lines.append(_("Face: nothing is kept."))
    if r.consent_at:
        lines.append(_("Consent to face recognition: recorded {when} by {by}.").format(
            when=_when(r.consent_at), by=q(r.consent_by or "")))
    else:
        lines.append(_("Consent to face recognition: none on record."))
    lines.append("")
    if r.visits:
        lines.append(_("<b>Last visits</b>"))
        unconfirmed = _("not confirmed")
        for v in r.visits:
            evidence = EVIDENCE.get(v.evidence or "")
            shown = evidence or unconfirmed
            lines.append(f"• {_when(v.start)}, {q(v.clinic)}: {shown}; {ANSWER.get(v.answer, ANSWER['none'])}")
    else:
        lines.append(_("No visits yet."))
    lines.append("")
    lines.append(_("<b>Who looked at or changed your record</b>"))
    looks = r.looks[-MAX_LOOKS:]
    for look in looks:
        did = AUDITOR_READ if look.role == "auditor" and not look.action.startswith(("patient", "visit")) \
            else ACTION.get(look.action)
        lines.append("• " + f"{_when(look.at)}: {ROLE.get(look.role, ROLE['clinic_system'])}"
                     + (f" — {did}" if did else ""))
    if not looks:
        lines.append(_("Nobody yet."))
    text = "\n".join(lines)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "…"


def copy_offer() -> str:
    return _("A full copy as a file: press a button below.")


def copy_caption() -> str:
    return _("Your data as Rastau keeps it. Times are in UTC.")


def not_a_patient(command: str) -> str:
    return _("/{command} is for patients. Connect with /start by sharing the phone number your clinic "
             "registered.").format(command=command)


def withdraw_prompt(names: list[str]) -> str:
    who = _("for: {names}").format(names=", ".join(q(n) for n in names)) + "\n\n" if len(names) > 1 else ""
    return who + _(
        "<b>Withdraw your consent to face recognition?</b>\n"
        "• Your face data is destroyed at once, backups included; it cannot be restored.\n"
        "• From then on your in-person visits are confirmed with the one-time code.\n"
        "• Your clinic's administrators are told.\n"
        "• Your past visits stay on record: they are billing records.")


def withdraw_done() -> str:
    return _("Done: your consent is withdrawn and your face data is destroyed. Your visits are now confirmed with "
             "the one-time code. Face recognition can start again only if the clinic records your new consent, "
             "and you will be told here.")


def unlink_prompt() -> str:
    return _("<b>Disconnect this chat from Rastau?</b>\n"
             "• No more codes or questions will come here.\n"
             "• Rastau forgets this chat.\n"
             "• Your visits stay on record: they are billing records.\n"
             "• To connect again, press /start and share your number.")


def unlink_done() -> str:
    return _("Done: this chat is disconnected and forgotten. To connect again, press /start.")


def nothing_changed() -> str:
    return _("All right, nothing changed.")


def withdrawal_notice(*, patient: str, iin_masked: str, clinic: str, at: dt.datetime) -> str:
    """To the clinic's admins and auditors."""
    return _("🔒 {clinic}: the patient {patient} ({iin}) withdrew consent to face recognition, {when}. Their face "
             "data is destroyed; verify their in-person visits with the one-time code.").format(
        clinic=q(clinic), patient=q(patient), iin=q(iin_masked), when=_when(at))
