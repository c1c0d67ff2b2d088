"""The capture page's texts: every one translated in Kazakh and Russian, and the catalogs hold exactly the texts the
page has (what `pybabel extract` on server/capture_texts.py finds), so neither can drift from the other."""
from __future__ import annotations

import io
from pathlib import Path

from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po

from core.model import Language
from server.capture_texts import DOMAIN, LOCALES_DIR, TEXTS, page_texts

SOURCE = Path(__file__).parents[2] / "server" / "capture_texts.py"


def test_every_text_of_the_page_is_translated_in_both_languages():
    for language in Language:
        texts = page_texts(language)
        untranslated = [key for key, msgid in TEXTS.items() if texts[key] == msgid or not texts[key].strip()]
        assert untranslated == [], f"{language.value}: {untranslated}"


def test_the_catalogs_hold_exactly_what_extraction_finds():
    from tests.web.test_web_texts import dashboard_msgids  # the web dashboard (issue 13) shares the "web" domain

    extracted = {message[1] for message in extract_from_file("python", str(SOURCE))}
    assert extracted == set(TEXTS.values())
    extracted |= dashboard_msgids()
    for language in Language:
        po = (LOCALES_DIR / language.value / "LC_MESSAGES" / f"{DOMAIN}.po").read_bytes()
        catalog = read_po(io.BytesIO(po), locale=language.value)
        assert {m.id for m in catalog if m.id} == extracted, language.value
        assert all(m.string for m in catalog if m.id), language.value


def test_placeholders_survive_translation():
    for language in Language:
        assert {"{step}", "{steps}"} <= set(page_texts(language)["step_of"].replace("{", " {").replace("}", "} ")
                                            .split())
