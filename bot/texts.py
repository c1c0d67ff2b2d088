"""What the bot says, built in the current locale (set by the middleware for replies, by the renderer for
scheduled messages). Every dynamic value is HTML-escaped: names come from clinic systems and users."""
from __future__ import annotations

import datetime as dt
import io

from aiogram.utils.i18n import get_i18n
from aiogram.utils.text_decorations import html_decoration as hd

from bot.i18n import _, __, day_and_time, day_name, ngettext, short_when, until, when
from core import csvfile
from core.model import VisitMode, VisitState
from core.names import short_name
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
                    "claimed_attended": __("says they were there"), "none": __("no answer"),
                    # issue 14: unanswered, and the patient has no working channel: nobody could ask
                    "no_channel": __("no way to ask (no working channel)")}
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
    """Shown before a language is chosen: the same short words once in Kazakh, once in Russian."""
    i18n = get_i18n()
    return "\n\n".join(i18n.gettext(
        "Hello! I am the Rastau bot of your polyclinic. I send you the one-time code for your visits and ask "
        "afterwards whether the visit really took place.", locale=code) for code in ("kk", "ru")) + \
        "\n\n" + " / ".join(i18n.gettext("Choose your language:", locale=code) for code in ("kk", "ru"))


def privacy_notice(*, ask_to_connect: bool = True) -> str:
    """What is really kept, and how to see it and withdraw: short enough for a phone screen."""
    text = _(
        "<b>What the Rastau bot keeps</b>\n"
        "• Your phone number, this chat's number and your answers about visits.\n"
        "• If your clinic saved your face for recognition: an encrypted reference of it, not the photo.\n"
        "• The webcam's photo at a visit is deleted at once. You may refuse it and give the doctor the code.\n"
        "/mydata shows what is kept, /withdraw takes your consent back, /stop disconnects.")
    if ask_to_connect:
        text += "\n\n" + _("To connect, press the button below. By sharing your number you agree to this.")
    return text


def already_linked() -> str:
    return _("You are already connected. /help shows what you can do here. If your clinic has registered someone "
             "else on this number since, press the button below to connect them too.")


def press_the_button() -> str:
    return _("Please don't type the number: press the «📱 Share my phone number» button below. Only the button "
             "shows Telegram's proof that the number is yours.")


def linked_summary(profile: ChatProfile) -> str:
    lines = [_("Done, you are connected.")]
    if profile.patients:
        clinics = ", ".join(sorted({q(profile.clinic_names.get(p.clinic_id, "")) for p in profile.patients}))
        lines.append(_("Clinic: {clinics}. Before each visit its code comes here, and after it a question "
                       "whether the visit took place.").format(clinics=clinics))
        if profile.family:
            names = ", ".join(sorted({q(short_name(p.full_name)) for p in profile.patients}))
            lines.append(_("Several patients share this number ({names}); every message says whom it is "
                           "about.").format(names=names))
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
    if profile.admins or profile.auditors:  # the web dashboard (issue 13)
        parts.append(_("<b>Web dashboard</b>\n• /web — a one-time link to sign in: the visits of any day, the "
                       "disputes and the doctors, with CSV files."))
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


def visit_lines(lines: list[VisitLine], shown: int, *, family: bool = False) -> str:
    """The /visits list; with ``family`` (the chat speaks for several patients) every line names its patient."""
    loc = locale()
    header = ngettext("In the last {days} days you had {n} visit:", "In the last {days} days you had {n} visits:",
                      len(lines)).format(days=PATIENT_HISTORY_DAYS, n=len(lines))
    body = []
    for n, line in enumerate(lines[:shown], start=1):
        online = " · " + _("online") if line.mode is VisitMode.ONLINE else ""
        whose = f"👤 {q(short_name(line.patient_name))} · " if family else ""
        body.append(f"{n}. {whose}<b>{q(when(line.start, loc))}</b>{online}\n   {q(line.clinic_name)}, "
                    f"{q(line.doctor_name)}\n   {q(patient_status(line))}")
    text = header + "\n\n" + "\n".join(body)
    if len(lines) > shown:
        rest = len(lines) - shown
        text += "\n\n" + ngettext("…and {n} earlier visit.", "…and {n} earlier visits.", rest).format(n=rest)
    return text


def visit_button_label(n: int, line: VisitLine) -> str:
    return _("{n}. I wasn't there ({when})").format(n=n, when=short_when(line.start, locale()))


# --- scheduled messages ----------------------------------------------------------------------------------------

def visit_heading(*, clinic: str, doctor: str, start: dt.datetime, online: bool, patient: str | None = None) -> str:
    """"Your visit: …" / "Visit of Ковалева М. П.: …" (``patient`` when the chat speaks for several patients)."""
    if online and patient:
        text = _("Online consultation of {patient}: {when}, doctor {doctor}, {clinic}.")
    elif online:
        text = _("Your online consultation: {when}, doctor {doctor}, {clinic}.")
    elif patient:
        text = _("Visit of {patient}: {when}, doctor {doctor}, {clinic}.")
    else:
        text = _("Your visit: {when}, doctor {doctor}, {clinic}.")
    return text.format(patient=q(patient or ""), when=q(when(start, locale())), doctor=q(doctor), clinic=q(clinic))


def code_message(code: str, *, clinic: str, doctor: str, start: dt.datetime, expires: dt.datetime, online: bool,
                 patient: str | None = None) -> str:
    """The one-time code; ``patient`` (a short name) when the chat speaks for several patients (a family phone)."""
    heading = visit_heading(clinic=clinic, doctor=doctor, start=start, online=online, patient=patient)
    line = (_("One-time code: <code>{code}</code>") if patient else
            _("Your one-time code: <code>{code}</code>")).format(code=code)
    if online:
        hint = _("Tell it to the doctor when asked: it confirms that the consultation took place.")
    elif patient:
        hint = _("Instead of a photo, this code can be given to the doctor.")
    else:
        hint = _("If you would rather not be photographed, give this code to the doctor.")
    valid = _("The code is valid {until}. Never tell it to anyone but the doctor.").format(
        until=q(until(expires, locale(), since=start)))
    return f"{heading}\n\n{line}\n\n{hint}\n{valid}"


def code_void_message(*, replaced: bool, clinic: str, doctor: str, start: dt.datetime, online: bool,
                      patient: str | None = None) -> str:
    """What an old code message is edited into: the visit without the code, and why the code is gone."""
    heading = visit_heading(clinic=clinic, doctor=doctor, start=start, online=online, patient=patient)
    if replaced:
        return heading + "\n\n" + _("🔁 This code was replaced: the doctor asked for a new one, sent in a later "
                                     "message.")
    return heading + "\n\n" + _("🚫 The clinic cancelled this visit, so its code no longer works.")


def cancelled_notice(*, clinic: str, doctor: str, start: dt.datetime, online: bool, patient: str | None = None) -> str:
    heading = visit_heading(clinic=clinic, doctor=doctor, start=start, online=online, patient=patient)
    return "🚫 " + heading + "\n\n" + _("The clinic cancelled this visit. Its code no longer works; nothing needs to "
                                         "be done.")


def code_already_sent(sent_at: dt.datetime, patient: str) -> str:
    """To the doctor who asks for a code again soon after one went out."""
    return _("A code for this consultation ({patient}) was already sent at {time}. The patient may not have looked "
             "yet. Send a new one? The earlier code will stop working.").format(
        patient=q(patient), time=q(day_and_time(sent_at, locale())[1]))


def attendance_question(*, clinic: str, doctor: str, start: dt.datetime, online: bool,
                        patient: str | None = None) -> str:
    """"Were you there?" as a sentence; about ``patient`` by name when the chat speaks for several patients."""
    day, time = day_and_time(start, locale())
    if online and patient:
        text = _("Did the online consultation of {patient} on {day} at {time} take place?")
    elif online:
        text = _("Did your online consultation on {day} at {time} take place?")
    elif patient:
        text = _("Was {patient} at the doctor's on {day} at {time}?")
    else:
        text = _("Were you at the doctor's on {day} at {time}?")
    return text.format(patient=q(patient or ""), day=q(day), time=q(time)) + "\n" + _(
        "Doctor: {doctor}, {clinic}.").format(doctor=q(doctor), clinic=q(clinic))


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

def change_notice(*, kind: str, clinic: str, at: dt.datetime, phone_tail: str, patient: str | None = None) -> str:
    """To the patient (the old chat for a new phone): what changed, where and when, and the way to object;
    ``patient`` (a short name) on a family number, so nobody objects to a change made for someone else."""
    what = str(CHANGE_FOR_PATIENT[kind]).format(last=q(phone_tail))
    whose = f"\n👤 <b>{q(patient)}</b>" if patient else ""
    return (f"🔔 <b>{q(clinic)}</b>, {q(when(at, locale()))}{whose}\n\n{what}\n\n"
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
    if tot.get("no_channel"):  # issue 14: "no answer" and "no way to ask" are not the same
        lines.append(_("  of them, nobody could ask (no chat, WhatsApp or SMS reaches the patient): {n}").format(
            n=tot["no_channel"]))
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
    elif row.code_delivery == "delivered":  # issue 14: WhatsApp or SMS said the code arrived
        mark = _("unverified, although the code reached the patient")
    else:
        mark = _("unverified")
    return (f"• #{row.visit_id} {row.start_local.strftime('%H:%M')}, {q(row.doctor_name)}, "
            f"{q(row.patient_name)} ({q(row.iin_masked)}) — {q(mark)}")


def digest_caption(digest: Digest) -> str:
    return _("All visits of {day}, one per line.").format(day=q(day_name(digest.day, locale())))


def digest_csv(digest: Digest) -> bytes:
    """The full list for spreadsheets: headers and values in the admin's language, IINs masked. ";"-separated
    UTF-8 with a byte-order mark: what Excel under Russian or Kazakh regional settings opens by double-click."""
    out = io.StringIO()
    writer = csvfile.spreadsheet_writer(out)  # formulas in names and reasons stay text
    writer.writerow([_("Visit"), _("Date and time"), _("Doctor"), _("Patient"), _("IIN"), _("Format"),
                     _("Service code"), _("Status"), _("Verified by"), _("Patient's answer"), _("Reason"),
                     _("Reachable in chat"), _("Registered at"), _("Registered after its time"), _("Verified at"),
                     _("Face photo record"), _("Face photo saved at"), _("Face photo saved < 24 h before"),
                     _("One-time code")])
    for r in digest.rows:
        writer.writerow([r.visit_id, r.start_local.strftime("%Y-%m-%d %H:%M"), r.doctor_name, r.patient_name,
                         r.iin_masked, str(MODE_NAME.get(r.mode, r.mode)), r.service_code,
                         str(STATE_FOR_ADMIN.get(r.state, r.state)), str(METHOD_FOR_ADMIN.get(r.verified_by or "", "")),
                         str(ANSWER_FOR_ADMIN[r.answer]), r.dispute_reason or "",
                         _yes_no(r.patient_reachable), _minute(r.registered_at),
                         _yes_no(r.registered_late), _minute(r.verified_at), r.verified_enrolment_id or "",
                         _minute(r.enrolled_at), _yes_no(r.fresh_reference), _code_delivery(r.code_delivery)])
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


def _code_delivery(value: str | None) -> str:
    """Issue 14: how far the visit's code got (WhatsApp and SMS report arrival; Telegram does not)."""
    if value == "delivered":
        return _("delivered to the patient")
    if value == "sent":
        return _("sent, delivery unknown")
    return ""


def _yes_no(value: bool) -> str:
    return _("yes") if value else _("no")


def digest_filename(digest: Digest) -> str:
    return f"rastau-digest-{digest.clinic_id}-{digest.day.isoformat()}.csv"
