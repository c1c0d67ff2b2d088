"""Kazakh and Russian through gettext: catalogs in ``locales/{kk,ru}/LC_MESSAGES/messages.po``.

The ``.mo`` files are build products (gitignored): :func:`compile_catalogs` rebuilds any that is missing or
older than its ``.po`` every time the bot starts, so a translation fix can never be shadowed by a stale file.

Maintainers (msgids are English, extracted with Babel)::

    python -m bot.i18n extract   # bot/**.py -> merged into locales/{kk,ru}/…/messages.po; lists what lacks a translation
    python -m bot.i18n compile   # .po -> .mo (the bot does this itself at start)
"""
from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
from pathlib import Path

from aiogram.utils.i18n import I18n
from aiogram.utils.i18n import gettext as _gettext
from aiogram.utils.i18n import lazy_gettext
from babel.dates import format_date, format_datetime, format_time
from babel.messages.extract import extract_from_dir
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

from core.clock import ALMATY
from core.model import Language

ROOT = Path(__file__).resolve().parents[1]
LOCALES_DIR = ROOT / "locales"
DOMAIN = "messages"
LANGUAGES = tuple(lang.value for lang in Language)
DEFAULT_LOCALE = Language.RU.value
# Babel keywords: _ and gettext (one msgid), __ (lazy), ngettext (singular, plural, n).
KEYWORDS = {"_": None, "gettext": None, "__": None, "ngettext": (1, 2)}
METHOD_MAP = [("**.py", "python")]

_ = _gettext
__ = lazy_gettext


def ngettext(singular: str, plural: str, n: int) -> str:
    """Plural lookup in the current locale (ru has three forms, kk two)."""
    return _gettext(singular, plural, n)


def compile_catalogs(path: Path = LOCALES_DIR) -> list[Path]:
    """Write ``messages.mo`` next to every ``messages.po`` that is newer (or has none). Returns what was built."""
    built = []
    for po_path in sorted(path.glob(f"*/LC_MESSAGES/{DOMAIN}.po")):
        mo_path = po_path.with_suffix(".mo")
        if mo_path.exists() and mo_path.stat().st_mtime >= po_path.stat().st_mtime:
            continue
        with po_path.open("rb") as fh:
            catalog = read_po(fh, locale=po_path.parent.parent.name, domain=DOMAIN)
        fd, tmp = tempfile.mkstemp(dir=mo_path.parent, suffix=".mo.tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                write_mo(out, catalog)
            os.replace(tmp, mo_path)  # atomic: a running bot never reads half a file
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        built.append(mo_path)
    return built


def make_i18n(path: Path = LOCALES_DIR) -> I18n:
    compile_catalogs(path)
    i18n = I18n(path=path, default_locale=DEFAULT_LOCALE, domain=DOMAIN)
    missing = set(LANGUAGES) - set(i18n.available_locales)
    if missing:
        raise RuntimeError(f"translations missing for {', '.join(sorted(missing))} in {path}")
    return i18n


def extract_template(root: Path = ROOT) -> Catalog:
    """Every translatable string in bot/, as Babel sees it."""
    template = Catalog(project="rastau", domain=DOMAIN)
    for filename, lineno, message, comments, context in extract_from_dir(
            root / "bot", METHOD_MAP, keywords=KEYWORDS, comment_tags=("i18n:",), strip_comment_tags=True):
        template.add(message, None, [(f"bot/{filename}", lineno)], auto_comments=comments, context=context)
    return template


# --- locale-aware formatting (always shown in Asia/Almaty) ------------------------------------------------

def when(moment: dt.datetime, locale: str) -> str:
    """"25 ноября 2026, 09:00" / "25 қараша 2026, 09:00"."""
    return format_datetime(moment, "d MMMM y, HH:mm", tzinfo=ALMATY, locale=locale)


def short_when(moment: dt.datetime, locale: str) -> str:
    return format_datetime(moment, "d MMM, HH:mm", tzinfo=ALMATY, locale=locale)


def clock_time(moment: dt.datetime, locale: str) -> str:
    return format_time(moment, "HH:mm", tzinfo=ALMATY, locale=locale)


def day_name(day: dt.date, locale: str) -> str:
    return format_date(day, "d MMMM y", locale=locale)


def _main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else ""
    if command == "compile":
        for mo in compile_catalogs():
            print(f"compiled {mo.relative_to(ROOT)}")
        return 0
    if command == "extract":
        template = extract_template()
        for lang in LANGUAGES:
            po_path = LOCALES_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po"
            with po_path.open("rb") as fh:
                catalog = read_po(fh, locale=lang)
            catalog.update(template, no_fuzzy_matching=True)
            with po_path.open("wb") as fh:
                write_po(fh, catalog, width=100, ignore_obsolete=True)
            untranslated = [m.id for m in catalog if m.id and not m.string]
            print(f"{po_path.relative_to(ROOT)}: {len(untranslated)} untranslated")
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
