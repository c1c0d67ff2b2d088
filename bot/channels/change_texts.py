"""A change to what identifies a patient (core/services/patient_changes.py), told on WhatsApp or by SMS (issue 14).

On Telegram the notice carries a «This wasn't me» button. WhatsApp's notice template and an SMS carry no button, so
these texts say how to object instead: RASTAU_SMS_DISPUTE_CONTACT (a short link or a phone number outside the
clinic), when it is set. The SMS wording is short: with a phone number as the contact each fits one segment in kk
and ru (Cyrillic: 70 characters), which tests/channels/test_change_notices.py checks. The caller sets the locale."""
from __future__ import annotations

import datetime as dt

from bot.i18n import _, __, when
from bot.texts import CHANGE_FOR_PATIENT, locale
from core.clock import to_local
from core.services.patient_changes import (
    CONSENT_RECORDED,
    FACE_ENROLLED,
    FACE_REPLACED,
    FACE_REVOKED,
    PHONE_CHANGED,
)

# i18n: an SMS; {day} is the date "29.11"; with the rest of the SMS it must fit 70 characters
SMS_WHAT = {
    FACE_ENROLLED: __("{day}: the clinic saved a photo of your face."),
    FACE_REPLACED: __("{day}: the clinic replaced the photo of your face."),
    FACE_REVOKED: __("{day}: the clinic deleted the photo of your face."),
    PHONE_CHANGED: __("{day}: your number in the record became ...{last}."),
    CONSENT_RECORDED: __("{day}: your consent to face recognition was recorded."),
}


def not_you(contact: str) -> str:
    """How to object where there is no button: the dispute contact."""
    # i18n: after a change notice (WhatsApp or SMS); {contact} is a short link or a phone number
    return _("Not you? {contact}").format(contact=contact)


def change_sms(*, kind: str, at: dt.datetime, phone_tail: str, contact: str) -> str | None:
    what = SMS_WHAT.get(kind)
    if what is None:
        return None
    text = str(what).format(day=to_local(at).strftime("%d.%m"), last=phone_tail)
    return f"{text} {not_you(contact)}" if contact else text


def change_message(*, kind: str, clinic: str, at: dt.datetime, phone_tail: str, patient: str | None,
                   contact: str) -> str | None:
    """The WhatsApp wording (plain text): where and when, whose record on a family number, what changed, and how to
    object."""
    what = CHANGE_FOR_PATIENT.get(kind)
    if what is None:
        return None
    whose = f"\n{patient}" if patient else ""
    lines = [f"{clinic}, {when(at, locale())}{whose}", str(what).format(last=phone_tail)]
    if contact:
        lines.append(not_you(contact))
    return "\n\n".join(lines)
