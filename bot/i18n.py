"""Kazakh and Russian through gettext: catalogs in ``locales/{kk,ru}/LC_MESSAGES/messages.po``.

Msgids are English, extracted from bot/ and merged into the catalogs with Babel's own commands and the mapping
in ``babel.cfg`` (which lists them). The ``.mo`` files are build products (gitignored):
:func:`compile_catalogs` rebuilds, with Babel's compile command, any that is missing or older than its ``.po``
every time the bot starts, so a translation fix can never be shadowed by a stale file.
"""
from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path

from aiogram.utils.i18n import I18n, lazy_gettext
from aiogram.utils.i18n import gettext as _gettext
from babel.dates import format_date, format_datetime, format_time
from babel.messages.frontend import CompileCatalog

from core.clock import ALMATY
from core.model import Language

ROOT = Path(__file__).resolve().parents[1]
LOCALES_DIR = ROOT / "locales"
DOMAIN = "messages"
LANGUAGES = tuple(lang.value for lang in Language)
DEFAULT_LOCALE = Language.RU.value

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
        fd, tmp = tempfile.mkstemp(dir=mo_path.parent, suffix=".mo.tmp")
        os.close(fd)
        try:
            _babel_compile(po_path, Path(tmp), locale=po_path.parent.parent.name)
            os.replace(tmp, mo_path)  # atomic: a running bot never reads half a file
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        built.append(mo_path)
    return built


def _babel_compile(po_path: Path, mo_path: Path, locale: str) -> None:
    """``pybabel compile -i PO -o MO -l LOCALE``, in this process."""
    command = CompileCatalog()
    command.input_file, command.output_file, command.locale, command.domain = str(po_path), str(mo_path), locale, DOMAIN
    command.finalize_options()
    command.run()  # a message Babel finds broken is logged, and the catalog compiled all the same


def make_i18n(path: Path = LOCALES_DIR) -> I18n:
    compile_catalogs(path)
    i18n = I18n(path=path, default_locale=DEFAULT_LOCALE, domain=DOMAIN)
    missing = set(LANGUAGES) - set(i18n.available_locales)
    if missing:
        raise RuntimeError(f"translations missing for {', '.join(sorted(missing))} in {path}")
    return i18n


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

