"""What the bot says around "I wasn't there" (issue 17): the one confirmation, who really heard of it, the wait for a
reason, the take-back, /visits one visit at a time and the one question about several backdated visits. In the
current locale; every dynamic value HTML-escaped. For patients the Kazakh avoids the legal "даулау" family."""
from __future__ import annotations

from bot.i18n import _, ngettext, short_when, when
from bot.texts import locale, patient_status, q
from core.model import VisitMode
from core.names import short_name
from core.services.dispute_answers import Audience
from core.services.visit_lists import VisitLine


def told(audience: Audience) -> str:
    """Who really heard of the patient's answer: the same rule (core.services.dispute_answers) for every reply."""
    if audience is Audience.ADMINS_AND_PAYER:
        return _("The clinic's administrators and the payer's auditors have been told.")
    if audience is Audience.ADMINS:
        return _("The clinic's administrators have been told.")
    if audience is Audience.PAYER:
        return _("Nobody at the clinic receives these messages, so the payer's auditors have been told.")
    return _("Right now nobody at the clinic or at the payer receives these messages, so your answer is only "
             "recorded. It stays in the visit's history, which inspections see.")


def visit_summary(line: VisitLine, *, several: bool = False) -> str:
    """One visit in a line or two: when, online or not, clinic and doctor (and whose visit on a family number)."""
    online = " · " + _("online") if line.mode is VisitMode.ONLINE else ""
    whose = f"{q(short_name(line.patient_name))}: " if several else ""
    return f"{whose}<b>{q(when(line.start, locale()))}</b>{online}\n{q(line.clinic_name)}, {q(line.doctor_name)}"


def confirm_dispute(line: VisitLine | None, *, several: bool = False) -> str:
    head = _("Please check: you were NOT at this visit?")
    if line is not None:
        head += "\n\n" + visit_summary(line, several=several)
    return head + "\n\n" + _("If you confirm, the clinic and the payer will be told that the visit did not take "
                             "place.")


def dispute_recorded(audience: Audience, undo_minutes: int) -> str:
    return (_("❌ Recorded: you were not at this visit.") + " " + told(audience) + "\n"
            + ngettext("Tapped by mistake? You can take it back within {n} minute.",
                       "Tapped by mistake? You can take it back within {n} minutes.", undo_minutes).format(
                n=undo_minutes))


def nothing_recorded() -> str:
    return _("All right, nothing was recorded.")


def ask_reason(minutes: int) -> str:
    return ngettext("If you want, write in one message what happened, for example: «I was at work that day». I "
                    "will wait for {n} minute. Or press «Skip».",
                    "If you want, write in one message what happened, for example: «I was at work that day». I "
                    "will wait for {n} minutes. Or press «Skip».", minutes).format(n=minutes)


def ask_reason_closed() -> str:
    """The message that asked for a reason, once the wait is over by time (it loses «Skip»)."""
    return _("The time for an explanation has passed. Your answer «I wasn't there» is recorded.")


def reason_passed(audience: Audience) -> str:
    return _("Thank you, your explanation was added to your answer.") + " " + told(audience)


def reason_too_late() -> str:
    return _("The time for an explanation has passed, so this message was not added to your answer. "
             "Your answer itself is recorded.")


def reason_skipped() -> str:
    return _("All right. Your answer is recorded.")


def withdrawn(audience: Audience) -> str:
    if audience is Audience.RECORDED_ONLY:
        return _("↩ Taken back: your answer «I wasn't there» is withdrawn. Both answers stay in the visit's "
                 "history.")
    return (_("↩ Taken back: your answer «I wasn't there» is withdrawn. Those who heard of it are told.") + " "
            + _("You can answer about this visit again in /visits."))


def take_back_closed(minutes: int) -> str:
    return ngettext("An answer can be taken back only within {n} minute; this one stays on record.",
                    "An answer can be taken back only within {n} minutes; this one stays on record.",
                    minutes).format(n=minutes)


def nothing_to_take_back() -> str:
    return _("There is nothing to take back for this visit.")


def withdrawn_notice(*, visit_id: int, clinic: str, patient: str, iin_masked: str, when_: str) -> str:
    """To the admins and auditors who heard of the dispute."""
    return (_("↩ The patient took back «I wasn't there» about visit #{visit_id}.").format(visit_id=visit_id)
            + "\n\n" + "\n".join([_("Clinic: {clinic}").format(clinic=q(clinic)),
                                  _("Patient: {patient}, IIN {iin}").format(patient=q(patient), iin=q(iin_masked)),
                                  _("Time: {when}").format(when=q(when_))]))


# --- /visits one visit at a time ------------------------------------------------------------------------------

def visits_page(lines: list[VisitLine], *, first: int, total: int, several: bool) -> str:
    """A page of the patient's visits, newest first, numbered across pages."""
    if not lines:
        return _("You have no visits in the last 30 days.")
    head = _("Your visits, newest first ({first}–{last} of {total}):").format(
        first=first, last=first + len(lines) - 1, total=total)
    body = [f"{n}. {visit_summary(line, several=several)}\n   {q(patient_status(line))}"
            for n, line in enumerate(lines, start=first)]
    return head + "\n\n" + "\n".join(body)


def visits_hint(any_buttons: bool) -> str:
    return _("To answer about a visit, press its number below.") if any_buttons else ""


def visit_button(n: int, line: VisitLine) -> str:
    return f"{n}. {short_when(line.start, locale())}"


def older_button() -> str:
    return _("Older ▶")


def newer_button() -> str:
    return _("◀ Newer")


def back_to_list_button() -> str:
    return _("◀ Back to the list")


def visit_choice(line: VisitLine, *, several: bool, can_yes: bool, can_no: bool) -> str:
    text = visit_summary(line, several=several) + "\n" + q(patient_status(line))
    if can_yes or can_no:
        text += "\n\n" + _("Were you at this visit?")
    else:
        text += "\n\n" + _("There is nothing to answer about this visit.")
    return text


def yes_button() -> str:
    return _("✅ Yes, I was there")


def no_button() -> str:
    return _("❌ I wasn't there")


# --- several backdated visits in one question -------------------------------------------------------------------

def late_visits_question(lines: list[VisitLine], *, several: bool) -> str:
    head = ngettext("The clinic has recorded {n} past visit in your name. Were you at it?",
                    "The clinic has recorded {n} past visits in your name. Were you at each of them?",
                    len(lines)).format(n=len(lines))
    body = [f"{n}. {visit_summary(line, several=several)}" for n, line in enumerate(lines, start=1)]
    return head + "\n\n" + "\n".join(body) + "\n\n" + _("Answer with the buttons, one row per visit.")
