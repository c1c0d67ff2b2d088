"""What the bot says to the payer's auditors: the daily summary across their clinics (with its CSV) and the audit
chain checkpoints. Built in the current locale, as :mod:`bot.texts`; every dynamic value is HTML-escaped."""
from __future__ import annotations

import io
from collections.abc import Callable

from bot.i18n import _, __, day_name, ngettext, when
from bot.texts import MAX_TEXT, locale, q
from core import csvfile
from core.checkpoint import Checkpoint
from core.services.auditor_summary import AuditorSummary, ClinicDay
from core.services.flags import Flag, FlagKind

MAX_CLINIC_LINES = 30
MAX_FLAG_LINES = 30

FLAG_NAME = {
    FlagKind.DAY_VOLUME: __("more visits in one day than a day holds"),
    FlagKind.CLOSE_VISITS: __("visits starting too soon one after another"),
    FlagKind.TWO_CLINICS: __("the same doctor in two clinics at the same time"),
    FlagKind.DOCTOR_CODE_SHARE: __("a doctor verifies by code instead of face far more than the clinic"),
    FlagKind.CLINIC_CODE_SHARE: __("the clinic verifies by code instead of face far more than usual"),
    FlagKind.UNVERIFIED_SHARE: __("many visits with no evidence at all"),
    FlagKind.DISPUTED_SHARE: __("many patients say they were not at the visit"),
    FlagKind.NO_ANSWER_SHARE: __("most patients never answered whether they were there"),
    FlagKind.REGISTERED_LATE: __("visits registered after their time had passed"),
    FlagKind.FACE_REPLACEMENTS: __("many patients' face photos replaced"),
    FlagKind.ENROLMENT_DISPUTES: __("patients dispute changes to their face, phone or consent"),
    FlagKind.SHARED_PHONE: __("many patients registered with one phone number"),
    FlagKind.CODE_CAP_HOURS: __("wrong codes at the hourly cap hour after hour"),
    FlagKind.FACE_CAP_HOURS: __("failed face checks at the hourly cap hour after hour"),
    FlagKind.SERVICE_MISFIT: __("a service billed for a patient of the wrong sex or age"),
    FlagKind.AFTER_DEATH: __("visits billed after the patient's death"),
}
SHARE_KINDS = {FlagKind.DOCTOR_CODE_SHARE, FlagKind.CLINIC_CODE_SHARE, FlagKind.UNVERIFIED_SHARE,
               FlagKind.DISPUTED_SHARE, FlagKind.NO_ANSWER_SHARE}


def _figure(flag: Flag, number: float) -> str:
    if flag.kind in SHARE_KINDS:
        return f"{number * 100:.0f}%"
    return str(int(number)) if float(number).is_integer() else f"{number:.2f}"


def _clinic_line(c: ClinicDay) -> str:
    if not c.visits:
        return _("• {clinic}: no visits").format(clinic=q(c.clinic_name))
    return _("• {clinic}: visits {visits} (live face {face_live}, single frame {face}, code {code}, unverified "
             "{unverified}); disputed {disputed}, no answer {no_answer}, registered late {late}").format(
        clinic=q(c.clinic_name), visits=c.visits, face_live=c.face_live, face=c.face, code=c.code,
        unverified=c.unverified, disputed=c.disputed, no_answer=c.no_answer, late=c.registered_late) + (
        # issue 14: of the unanswered, those nobody could ask
        _("; nobody could ask {n} of the unanswered (no working channel)").format(n=c.no_channel)
        if c.no_channel else "")


def _doctor(summary: AuditorSummary, flag: Flag) -> str:
    """The doctor a flag names, as "name (#id)"; empty for a flag about the whole clinic."""
    if flag.doctor_id is None:
        return ""
    return f"{summary.doctor_names.get(flag.doctor_id, '')} (#{flag.doctor_id})".strip()


def _flag_line(summary: AuditorSummary, flag: Flag) -> str:
    where = q(summary.clinic_name(flag.clinic_id))
    if flag.doctor_id is not None:
        where += ", " + q(_doctor(summary, flag))
    return _("• {where}: {what} — {value} (threshold {threshold}), visits: {visits}").format(
        where=where, what=q(FLAG_NAME[flag.kind]), value=_figure(flag, flag.value),
        threshold=_figure(flag, flag.threshold), visits=len(flag.visit_ids))


def _capped(lines: list[str], more: list[str], limit: int, rest: Callable[[int], str]) -> list[str]:
    """``lines`` plus as many of ``more`` as fit ``limit`` lines and the message's length, then a "see the CSV"."""
    text_so_far = len("\n".join(lines))
    for n, line in enumerate(more):
        if n >= limit or text_so_far + len(line) > MAX_TEXT - 300:
            lines.append(rest(len(more) - n))
            break
        lines.append(line)
        text_so_far += len(line) + 1
    return lines


def summary_message(summary: AuditorSummary) -> str:
    day = q(day_name(summary.day, locale()))
    lines = [_("<b>Rastau for the auditor: {day}</b>").format(day=day), ""]
    lines = _capped(lines, [_clinic_line(c) for c in summary.clinics], MAX_CLINIC_LINES, lambda n: ngettext(
        "…and {n} more clinic: see the CSV file.", "…and {n} more clinics: see the CSV file.", n).format(n=n))
    lines.append("")
    if not summary.flags:
        lines.append(_("No red flags on this day."))
        return "\n".join(lines)
    lines.append(ngettext("🚩 <b>{n} red flag</b>:", "🚩 <b>{n} red flags</b>:", len(summary.flags)).format(
        n=len(summary.flags)))
    return "\n".join(_capped(lines, [_flag_line(summary, f) for f in summary.flags], MAX_FLAG_LINES, lambda n: ngettext(
        "…and {n} more flag: see the CSV file.", "…and {n} more flags: see the CSV file.", n).format(n=n)))


def summary_caption(summary: AuditorSummary) -> str:
    return _("Every clinic and every red flag of {day}, with the visits that raised each flag.").format(
        day=q(day_name(summary.day, locale())))


def summary_csv(summary: AuditorSummary) -> bytes:
    """Two tables, headers in the auditor's language: the clinics' counts, then the flags with their visit ids.
    UTF-8 with a byte-order mark so Excel shows Cyrillic correctly."""
    out = io.StringIO()
    writer = csvfile.writer(out)
    writer.writerow([_("Clinic"), _("Clinic name"), _("Visits"), _("Live face"), _("Single frame"), _("Code"),
                     _("Unverified"), _("Disputed"), _("No answer"), _("Registered late"),
                     _("No way to ask")])  # issue 14
    writer.writerows([c.clinic_id, c.clinic_name, c.visits, c.face_live, c.face, c.code, c.unverified, c.disputed,
                      c.no_answer, c.registered_late, c.no_channel] for c in summary.clinics)
    writer.writerow([])
    writer.writerow([_("Clinic"), _("Doctor"), _("Flag"), _("Rule"), _("Value"), _("Threshold"), _("Visits"),
                     _("Visit numbers")])
    writer.writerows([f.clinic_id, _doctor(summary, f), str(FLAG_NAME[f.kind]),
                      f.kind.value, _figure(f, f.value), _figure(f, f.threshold), len(f.visit_ids),
                      " ".join(map(str, f.visit_ids))] for f in summary.flags)
    return out.getvalue().encode("utf-8-sig")


def summary_filename(summary: AuditorSummary) -> str:
    return f"rastau-auditor-{summary.auditor_id}-{summary.day.isoformat()}.csv"


def checkpoint_line(checkpoint: Checkpoint) -> str:
    """The short line that goes with the signed checkpoint file."""
    return _("🔏 Audit log checkpoint of {when}: {chains} chains, {rows} records, signed with key {key}. Keep the "
             "file: it proves later that none of these records was changed.").format(
        when=q(when(checkpoint.at, locale())), chains=len(checkpoint.heads),
        rows=sum(h.seq for h in checkpoint.heads), key=q(checkpoint.key_id))
