"""What the bot says, built in the current locale (set by the middleware for replies, by the renderer for
scheduled messages). Every dynamic value is HTML-escaped: names come from clinic systems and users."""
from __future__ import annotations

import datetime as dt
import io

from aiogram.utils.i18n import get_i18n
from aiogram.utils.text_decorations import html_decoration as hd

from bot.i18n import _, __, day_name, ngettext, short_when, when
from core import csvfile
from core.model import VisitMode, VisitState
from core.services.chat import ChatProfile
from core.services.digest import Digest, DigestRow
from core.services.patient_changes import CONSENT_RECORDED, FACE_ENROLLED, FACE_REPLACED, FACE_REVOKED, PHONE_CHANGED
from core.services.visit_lists import PATIENT_HISTORY_DAYS, VisitLine

MAX_TEXT = 4000  # Telegram's limit is 4096 characters; keep room for the "and N more" line
MAX_FLAGGED_LINES = 40
MAX_DISPUTE_LINES = 10

STATE_FOR_PATIENT = {
    VisitState.SCHEDULED: __("scheduled"),
    VisitState.UNVERIFIED: __("not verified at the clinic"),
    VisitState.PATIENT_CONFIRMED: __("you confirmed it"),
    VisitState.PATIENT_DISPUTED: __("you said you weren't there"),
    VisitState.CANCELLED: __("cancelled"),
}
VERIFIED_FOR_PATIENT = {"face": __("verified at the clinic by photo"),
                        "face_live": __("verified at the clinic by a live camera check"),
                        "code": __("verified at the clinic by code")}

STATE_FOR_ADMIN = {
    VisitState.SCHEDULED.value: __("scheduled"),
    VisitState.VERIFIED.value: __("verified"),
    VisitState.UNVERIFIED.value: __("unverified"),
    VisitState.PATIENT_CONFIRMED.value: __("confirmed by the patient"),
    VisitState.PATIENT_DISPUTED.value: __("disputed by the patient"),
    VisitState.CANCELLED.value: __("cancelled"),
}
ANSWER_FOR_ADMIN = {"confirmed": __("confirmed"), "disputed": __("wasn't there"),
                    "claimed_attended": __("says they were there"), "none": __("no answer")}
# A single frame from the clinic's system is the weaker kind of face evidence (any photo of the patient passes it).
METHOD_FOR_ADMIN = {"face": __("face, single frame (weaker)"), "face_live": __("face, live check"), "code": __("code")}
MODE_NAME = {VisitMode.IN_PERSON.value: __("in person"), VisitMode.ONLINE.value: __("online")}
CHANGE_FOR_PATIENT = {
    FACE_ENROLLED: __("A photo of you was saved for face recognition. From now on the doctor's webcam compares "
                      "you with it."),
    FACE_REPLACED: __("The photo the doctor's webcam recognises you by was replaced with a new one. Whoever looks "
                      "like the new photo will now be taken for you."),
    FACE_REVOKED: __("Your photo for face recognition was deleted. Until a new one is saved, your visits are "
                     "confirmed with the one-time code."),
    PHONE_CHANGED: __("The phone number in your record was changed; the new number ends in {last}. Codes and "
                      "questions about your visits will no longer come to this chat."),
    CONSENT_RECORDED: __("Your consent to face recognition by the doctor's webcam was recorded."),
}
CHANGE_FOR_ADMIN = {FACE_ENROLLED: __("face photo saved"), FACE_REPLACED: __("face photo replaced"),
                    FACE_REVOKED: __("face photo deleted"), PHONE_CHANGED: __("phone number changed"),
                    CONSENT_RECORDED: __("consent recorded")}


def locale() -> str:
    return get_i18n().current_locale


def q(value: object) -> str:
    return hd.quote(str(value))


# --- onboarding ----------------------------------------------------------------------------------------------

def greeting() -> str:
    """Shown before a language is chosen: the same words in Kazakh and in Russian."""
    i18n = get_i18n()
    return "\n\n".join(i18n.gettext(
        "Hello! This is Rastau, the bot of your polyclinic. It sends you the one-time code for your visits and "
        "asks whether you really were at the doctor, so that nobody can bill a visit in your name.\n"
        "Choose your language:", locale=code) for code in ("kk", "ru"))


def privacy_notice(*, ask_to_connect: bool = True) -> str:
    text = _(
        "<b>How Rastau uses your data</b>\n"
        "• We keep your phone number, the chat id and your answers about your visits. Your clinic registered "
        "your name, IIN and appointments.\n"
        "• When the doctor turns the webcam to you, the photo is used only to recognise you and is deleted "
        "at once. It is never stored.\n"
        "• You may refuse the photo: give the doctor the six-digit code this bot sends you before the visit.\n"
        "• You can stop at any time with /stop.")
    if ask_to_connect:
        text += "\n\n" + _("To connect, press the button below and share your phone number. By sharing it you "
                            "agree to these terms.")
    return text


def linked_summary(profile: ChatProfile) -> str:
    lines = [_("Done, you are connected.")]
    if profile.patients:
        clinics = ", ".join(sorted({q(profile.clinic_names.get(p.clinic_id, "")) for p in profile.patients}))
        lines.append(_("Patient of: {clinics}. Before each visit you will get its code here, and after it a "
                       "question whether you were there.").format(clinics=clinics))
    if profile.doctors:
        lines.append(_("You are registered as a doctor. /code sends a code to a patient of your online "
                       "consultation."))
    if profile.admins:
        lines.append(_("You are a clinic administrator. Every morning you will get the digest of the previous "
                       "day; /digest shows it at any time."))
    if profile.auditors:
        lines.append(_("You are an auditor of the payer. Every «I wasn't there» and every disputed change to a "
                       "patient's face, phone or consent in the clinics you audit reaches you at once; every "
                       "morning, the previous day across those clinics with its red flags."))
    lines.append(_("/help explains everything."))
    return "\n\n".join(lines)


def help_text(profile: ChatProfile) -> str:
    parts = [_("<b>Rastau</b> confirms that every visit billed in your name really happened.")]
    if not profile.linked:
        parts.append(_("/start — connect this chat: choose a language and share your phone number."))
    if profile.patients or not profile.linked:
        parts.append(_(
            "<b>For patients</b>\n"
            "• Before a visit you get a six-digit code. You may give it to the doctor instead of being "
            "photographed. For an online consultation the doctor asks for it.\n"
            "• After a visit we ask: were you there? If you were not, press «I wasn't there»: the clinic's "
            "administrators are told at once. Your answer becomes final after 48 hours.\n"
            "• /visits — your visits of the last 30 days; any of them can be disputed there."))
    if profile.doctors:
        parts.append(_(
            "<b>For doctors</b>\n"
            "• /code — your online consultations of today. Choose one and the patient gets a code in this "
            "bot. Enter what the patient tells you in the clinic system. You never see the code yourself."))
    if profile.admins:
        parts.append(_(
            "<b>For clinic administrators</b>\n"
            "• Every morning: the digest of the previous day with a CSV file.\n"
            "• /digest — yesterday's digest; /digest 24.11.2026 — the digest of that day.\n"
            "• A patient's «I wasn't there» reaches you at once."))
    if profile.auditors:
        parts.append(_(
            "<b>For the payer's auditors</b>\n"
            "• A patient's «I wasn't there» and a disputed change to a patient's face, phone or consent, in the "
            "clinics you audit, reach you at once, whether or not the clinic's administrators read them.\n"
            "• Every morning: the previous day across your clinics, its red flags and a CSV file.\n"
            "• Signed checkpoints of the audit log: keep the files, they prove later that no record was changed."))
    parts.append(_("/language — change the language\n/privacy — what we keep and what we never keep\n"
                   "/stop — disconnect and receive no more messages"))
    return "\n\n".join(parts)


# --- patient's visits ----------------------------------------------------------------------------------------

def patient_status(line: VisitLine) -> str:
    if line.state is VisitState.VERIFIED:
        return str(VERIFIED_FOR_PATIENT.get(line.verified_by or "", __("verified at the clinic")))
    if line.state is VisitState.UNVERIFIED and line.attended_claim_at is not None:
        return _("not verified at the clinic; you said you were there")
    return str(STATE_FOR_PATIENT[line.state])


def visit_lines(lines: list[VisitLine], shown: int) -> str:
    loc = locale()
    header = ngettext("In the last {days} days you had {n} visit:", "In the last {days} days you had {n} visits:",
                      len(lines)).format(days=PATIENT_HISTORY_DAYS, n=len(lines))
    body = []
    for n, line in enumerate(lines[:shown], start=1):
        online = " · " + _("online") if line.mode is VisitMode.ONLINE else ""
        body.append(f"{n}. <b>{q(when(line.start, loc))}</b>{online}\n   {q(line.clinic_name)}, "
                    f"{q(line.doctor_name)}\n   {q(patient_status(line))}")
    text = header + "\n\n" + "\n".join(body)
    if len(lines) > shown:
        rest = len(lines) - shown
        text += "\n\n" + ngettext("…and {n} earlier visit.", "…and {n} earlier visits.", rest).format(n=rest)
    return text


def visit_button_label(n: int, line: VisitLine) -> str:
    return _("{n}. I wasn't there ({when})").format(n=n, when=short_when(line.start, locale()))


# --- scheduled messages ----------------------------------------------------------------------------------------

def code_message(code: str, *, clinic: str, doctor: str, start: dt.datetime, expires: dt.datetime, online: bool) -> str:
    loc = locale()
    if online:
        text = _("Your online consultation: {doctor}, {clinic}, {when}.\n\n"
                 "Your one-time code: <code>{code}</code>\n\n"
                 "Tell it to the doctor when asked. It confirms that the consultation really took place.")
    else:
        text = _("Your visit: {doctor}, {clinic}, {when}.\n\n"
                 "Your one-time code: <code>{code}</code>\n\n"
                 "You may give this code to the doctor instead of being photographed.")
    text = text.format(doctor=q(doctor), clinic=q(clinic), when=q(when(start, loc)), code=code)
    return text + "\n" + _("The code is valid until {time}. Never tell it to anyone except your doctor.").format(
        time=q(short_when(expires, loc)))


def attendance_question(*, clinic: str, doctor: str, start: dt.datetime, online: bool) -> str:
    loc = locale()
    if online:
        return _("Did you have an online consultation with {doctor} ({clinic}) on {when}?").format(
            doctor=q(doctor), clinic=q(clinic), when=q(when(start, loc)))
    return _("Were you at {clinic}, {doctor}, {when}?").format(clinic=q(clinic), doctor=q(doctor),
                                                               when=q(when(start, loc)))


def dispute_notice(*, visit_id: int, clinic: str, doctor: str, patient: str, iin_masked: str, start: dt.datetime,
                   mode: str, verified_by: str | None, reason: str | None, reason_update: bool) -> str:
    loc = locale()
    if reason_update:
        head = _("📝 The patient explained the dispute of visit #{visit_id}.").format(visit_id=visit_id)
    else:
        head = _("⚠️ A patient says they were NOT at visit #{visit_id}.").format(visit_id=visit_id)
    how = METHOD_FOR_ADMIN.get(verified_by or "")
    details = [
        _("Clinic: {clinic}").format(clinic=q(clinic)),
        _("Patient: {patient}, IIN {iin}").format(patient=q(patient), iin=q(iin_masked)),
        _("Doctor: {doctor}").format(doctor=q(doctor)),
        _("Time: {when} ({mode})").format(when=q(when(start, loc)), mode=q(MODE_NAME.get(mode, mode))),
        (_("Verification: {method}").format(method=q(how)) if how else _("Verification: none")),
        (_("Reason: {reason}").format(reason=q(reason)) if reason else _("Reason: not given yet")),
    ]
    return head + "\n\n" + "\n".join(details)


# --- changes to what identifies a patient ---------------------------------------------------------------------

def change_notice(*, kind: str, clinic: str, at: dt.datetime, phone_tail: str) -> str:
    """To the patient (the old chat for a new phone): what changed, where and when, and the way to object."""
    what = str(CHANGE_FOR_PATIENT[kind]).format(last=q(phone_tail))
    return (f"🔔 <b>{q(clinic)}</b>, {q(when(at, locale()))}\n\n{what}\n\n"
            + _("If you did not ask for this, press «This wasn't me»: the clinic's administrators will know at "
                "once."))


def change_dispute_notice(*, change_id: int, kind: str, clinic: str, patient: str, iin_masked: str, at: dt.datetime,
                          actor: str, disputed_at: dt.datetime) -> str:
    loc = locale()
    head = _("⚠️ A patient says they did NOT ask for change #{change_id}.").format(change_id=change_id)
    details = [
        _("Change: {what}").format(what=q(CHANGE_FOR_ADMIN.get(kind, kind))),
        _("Clinic: {clinic}").format(clinic=q(clinic)),
        _("Patient: {patient}, IIN {iin}").format(patient=q(patient), iin=q(iin_masked)),
        _("Made: {when}, by {actor}").format(when=q(when(at, loc)), actor=q(actor)),
        _("Disputed: {when}").format(when=q(when(disputed_at, loc))),
    ]
    return head + "\n\n" + "\n".join(details)


# --- the admins' digest ----------------------------------------------------------------------------------------

def digest_messages(digest: Digest) -> tuple[str, bool]:
    """The digest text, and whether a CSV should follow (not for a one-line "all confirmed")."""
    loc = locale()
    day = q(day_name(digest.day, loc))
    clinic = q(digest.clinic_name)
    tot = digest.totals
    if tot["visits"] == 0 and tot["cancelled"] == 0 and not digest.enrolment_disputes:
        return _("{clinic}, {day}: no visits were registered.").format(clinic=clinic, day=day), False
    if digest.all_confirmed:
        return _("✅ {clinic}, {day}: all visits confirmed.").format(clinic=clinic, day=day), False
    lines = [_("<b>Digest for {clinic}, {day}</b>").format(clinic=clinic, day=day), ""]
    lines += [
        ngettext("{n} visit", "{n} visits", tot["visits"]).format(n=tot["visits"]),
        _("• verified by a live face check: {n}").format(n=tot["face_live_verified"]),
        _("• verified by a single face frame (weaker): {n}").format(n=tot["face_verified"]),
        _("• verified by code: {n}").format(n=tot["code_verified"]),
        _("• unverified: {n}").format(n=tot["unverified"]),
        _("• confirmed by the patient: {n}").format(n=tot["patient_confirmed"]),
        _("• disputed by the patient: {n}").format(n=tot["disputed"]),
        _("• no answer yet: {n}").format(n=tot["no_answer"]),
    ]
    if tot["cancelled"]:
        lines.append(_("• cancelled: {n}").format(n=tot["cancelled"]))
    if tot["unreachable"]:
        lines.append(ngettext(
            "For {n} visit the patient could not be reached in the chat (blocked the bot or never connected).",
            "For {n} visits the patient could not be reached in the chat (blocked the bot or never connected).",
            tot["unreachable"]).format(n=tot["unreachable"]))
    if tot["registered_late"]:
        lines.append(ngettext(
            "{n} visit was registered after its time had passed: nothing could confirm it.",
            "{n} visits were registered after their time had passed: nothing could confirm them.",
            tot["registered_late"]).format(n=tot["registered_late"]))
    if tot["fresh_reference"]:
        lines.append(ngettext(
            "{n} visit was confirmed by a face photo saved less than 24 hours earlier, for a patient with no chat "
            "to hear of it.",
            "{n} visits were confirmed by a face photo saved less than 24 hours earlier, for a patient with no "
            "chat to hear of it.", tot["fresh_reference"]).format(n=tot["fresh_reference"]))
    if digest.per_doctor:
        lines += ["", _("<b>By doctor</b> (visits / verified / unverified / disputed):")]
        lines += [f"• {q(doc.doctor_name)}: {doc.total} / {doc.verified} / {doc.unverified} / {doc.disputed}"
                  for doc in digest.per_doctor]
    lines += _enrolment_dispute_lines(digest)
    if digest.flagged:
        lines += ["", _("<b>Needs attention</b>:")]
        text_so_far = "\n".join(lines)
        for n, row in enumerate(digest.flagged):
            line = _flagged_line(row)
            if n >= MAX_FLAGGED_LINES or len(text_so_far) + len(line) > MAX_TEXT - 200:
                rest = len(digest.flagged) - n
                lines.append(ngettext("…and {n} more visit, see the CSV file.",
                                      "…and {n} more visits, see the CSV file.", rest).format(n=rest))
                break
            lines.append(line)
            text_so_far += "\n" + line
    return "\n".join(lines), True


def _enrolment_dispute_lines(digest: Digest) -> list[str]:
    """Changes to a face, phone or consent the patient said they did not ask for: before the visits, they are
    rarer and weigh more (a replaced face makes every later face match doubtful)."""
    if not digest.enrolment_disputes:
        return []
    lines = ["", _("<b>Changes patients say they did not ask for</b>:")]
    for n, d in enumerate(digest.enrolment_disputes):
        if n == MAX_DISPUTE_LINES:
            rest = len(digest.enrolment_disputes) - n
            lines.append(ngettext("…and {n} more change, see the CSV file.", "…and {n} more changes, see the CSV file.",
                                  rest).format(n=rest))
            break
        lines.append(f"• #{d.change_id} {q(d.patient_name)} ({q(d.iin_masked)}) — "
                     f"{q(CHANGE_FOR_ADMIN.get(d.kind, d.kind))}, {d.changed_at_local.strftime('%d.%m %H:%M')}, "
                     f"{q(d.actor)}")
    return lines


def _flagged_line(row: DigestRow) -> str:
    if row.answer == "disputed":
        mark = _("disputed")
        if row.dispute_reason:
            mark += ": «" + row.dispute_reason[:120] + "»"
    elif row.fresh_reference:
        mark = _("face matched a photo saved less than 24 hours earlier; the patient has no chat to hear of it")
    elif row.registered_late:
        mark = _("registered after its time had passed")
    else:
        mark = _("unverified")
    return (f"• #{row.visit_id} {row.start_local.strftime('%H:%M')}, {q(row.doctor_name)}, "
            f"{q(row.patient_name)} ({q(row.iin_masked)}) — {q(mark)}")


def digest_caption(digest: Digest) -> str:
    return _("All visits of {day}, one per line.").format(day=q(day_name(digest.day, locale())))


def digest_csv(digest: Digest) -> bytes:
    """The full list for spreadsheets: headers and values in the admin's language, IINs masked.
    UTF-8 with a byte-order mark so Excel shows Cyrillic correctly."""
    out = io.StringIO()
    writer = csvfile.writer(out)  # formulas in names and reasons stay text
    writer.writerow([_("Visit"), _("Date and time"), _("Doctor"), _("Patient"), _("IIN"), _("Format"),
                     _("Service code"), _("Status"), _("Verified by"), _("Patient's answer"), _("Reason"),
                     _("Reachable in chat"), _("Registered at"), _("Registered after its time"), _("Verified at"),
                     _("Face photo record"), _("Face photo saved at"), _("Face photo saved < 24 h before")])
    for r in digest.rows:
        writer.writerow([r.visit_id, r.start_local.strftime("%Y-%m-%d %H:%M"), r.doctor_name, r.patient_name,
                         r.iin_masked, str(MODE_NAME.get(r.mode, r.mode)), r.service_code,
                         str(STATE_FOR_ADMIN.get(r.state, r.state)), str(METHOD_FOR_ADMIN.get(r.verified_by or "", "")),
                         str(ANSWER_FOR_ADMIN[r.answer]), r.dispute_reason or "",
                         _yes_no(r.patient_reachable), _minute(r.registered_at),
                         _yes_no(r.registered_late), _minute(r.verified_at), r.verified_enrolment_id or "",
                         _minute(r.enrolled_at), _yes_no(r.fresh_reference)])
    if digest.enrolment_disputes:  # a second table under the visits
        writer.writerow([])
        writer.writerow([_("Change"), _("What changed"), _("Changed at"), _("Disputed at"), _("Made by"),
                         _("Patient"), _("IIN")])
        for d in digest.enrolment_disputes:
            writer.writerow([d.change_id, str(CHANGE_FOR_ADMIN.get(d.kind, d.kind)),
                             d.changed_at_local.strftime("%Y-%m-%d %H:%M"),
                             d.disputed_at_local.strftime("%Y-%m-%d %H:%M"), d.actor, d.patient_name, d.iin_masked])
    return out.getvalue().encode("utf-8-sig")


def _minute(moment: dt.datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else ""


def _yes_no(value: bool) -> str:
    return _("yes") if value else _("no")


def digest_filename(digest: Digest) -> str:
    return f"rastau-digest-{digest.clinic_id}-{digest.day.isoformat()}.csv"
