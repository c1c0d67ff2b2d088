"""The dashboard's texts: gettext's "web" domain (locales/{kk,ru}/LC_MESSAGES/web.po), the capture page's too.

Templates call ``_("English msgid")``; Babel's jinja2 extractor finds those calls (babel.cfg), and
tests/server/test_web_texts.py fails when one lacks a translation in either language. Python code marks its texts
with :func:`N_` and translates them with :func:`translate`.
"""
from __future__ import annotations

from collections.abc import Callable

from core.model import Language
from server.capture_texts import LANGUAGE_NAMES, catalog

__all__ = ["LANGUAGE_NAMES", "N_", "gettext_for", "translate"]


def N_(text: str) -> str:
    return text


def translate(language: Language, msgid: str) -> str:
    """The translation; a missing one is a bug the catalog test catches, so the English msgid shows."""
    return catalog(language).get(msgid, msgid)


def gettext_for(language: Language) -> Callable[[str], str]:
    texts = catalog(language)

    def gettext(msgid: str) -> str:
        return texts.get(msgid, msgid)

    return gettext
