"""The capture page's texts in Kazakh and Russian: gettext's "web" domain, beside the bot's "messages".

Msgids are English and marked with ``N_`` here; ``locales/{kk,ru}/LC_MESSAGES/web.po`` hold the translations,
kept with Babel's own commands (babel.cfg has them). The server reads the ``.po`` files once, at first use: no
compiled ``.mo`` to go stale. tests/server/test_capture_texts.py fails when a text lacks a translation in either
language, or the catalogs lack a text this module has.
"""
from __future__ import annotations

from functools import cache
from pathlib import Path

from babel.messages.pofile import read_po

from core.model import Language

LOCALES_DIR = Path(__file__).resolve().parents[1] / "locales"
DOMAIN = "web"


def N_(text: str) -> str:
    return text


# Keys are what the page's script looks up; values the msgids.
TEXTS = {
    "title": N_("Confirming your visit with the camera"),
    "lead": N_("Look at the camera and follow the instructions on the screen. It takes less than a minute."),
    "allow_camera": N_("When the browser asks, allow the camera."),
    "privacy": N_("The camera picture is checked and deleted at once; it is never saved."),
    "start": N_("Start"),
    "connecting": N_("Connecting the camera…"),
    "pose_straight": N_("Look straight at the camera"),
    "pose_left": N_("Slowly turn your head to your left"),
    "pose_right": N_("Slowly turn your head to your right"),
    "step_of": N_("Step {step} of {steps}"),
    "checking": N_("Checking…"),
    "match": N_("Thank you! Your visit is confirmed."),
    "no_match": N_("Your face did not match the photo on record."),
    "no_face": N_("No face was seen. Sit facing the camera, in good light."),
    "multiple_faces": N_("More than one face was seen. Only the patient should be in front of the camera."),
    "not_live": N_("The head turns were not recognised."),
    "not_live_hint": N_("When asked, turn your head a little further, and hold it until the next instruction."),
    "refused": N_("Too many failed attempts for now."),
    "unavailable": N_("This link has expired or has already been used."),
    "camera": N_("The camera is not available. Check that it is connected and allowed."),
    "error": N_("Something went wrong on the server."),
    "try_again": N_("Ask the doctor to start the check again."),
    "use_code": N_("Or confirm the visit with the one-time code from your chat."),
    "language": N_("Language"),
}
LANGUAGE_NAMES = {Language.KK: "Қазақша", Language.RU: "Русский"}  # each in its own language, never translated


@cache
def catalog(language: Language) -> dict[str, str]:
    """msgid → translation for one language, read from its web.po."""
    with (LOCALES_DIR / language.value / "LC_MESSAGES" / f"{DOMAIN}.po").open("rb") as po:
        parsed = read_po(po, locale=language.value, domain=DOMAIN)
    return {str(message.id): str(message.string) for message in parsed if message.id and message.string}


def page_texts(language: Language) -> dict[str, str]:
    """The page's texts by key; a missing translation is a bug the tests catch, so it shows the English msgid."""
    translated = catalog(language)
    return {key: translated.get(msgid, msgid) for key, msgid in TEXTS.items()}
