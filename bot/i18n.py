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

from core.clock import ALMATY, to_local
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
# Kazakh is written out by hand rather than taken from CLDR: CLDR's "30 қараша 2026" and "30 қар." are not how
# Kazakh writes dates ("2026 жылғы 30 қараша", no invented abbreviations), and a case ending after a number
# ("13:39-ға дейін") follows how the number is read aloud, which CLDR does not know.

KK_MONTHS = ("қаңтар", "ақпан", "наурыз", "сәуір", "мамыр", "маусым", "шілде", "тамыз", "қыркүйек", "қазан",
             "қараша", "желтоқсан")
_KK_UNITS = ("нөл", "бір", "екі", "үш", "төрт", "бес", "алты", "жеті", "сегіз", "тоғыз")
_KK_TENS = ("", "он", "жиырма", "отыз", "қырық", "елу", "алпыс", "жетпіс", "сексен", "тоқсан")
_KK_BACK_VOWELS, _KK_FRONT_VOWELS = set("аоұыя"), set("әөүіеэию")
_KK_VOICELESS = set("кқпстфхцчшщ")
_KK_NASAL = set("мнң")
KK_CASES = ("dative", "locative", "ablative")


def kk_number_word(n: int) -> str:
    """The last word said when ``n`` is read aloud: 13 → "үш", 40 → "қырық", 100 → "жүз", 2000 → "мың"."""
    n = abs(n)
    if n == 0:
        return _KK_UNITS[0]
    if n % 10:
        return _KK_UNITS[n % 10]
    if n % 100:
        return _KK_TENS[n % 100 // 10]
    if n % 1000:
        return "жүз"
    return "мың" if n % 1_000_000 else "миллион"


def kk_suffix(word: str, case: str) -> str:
    """The case ending a Kazakh word takes by vowel harmony and its last sound (dative, locative, ablative)."""
    if case not in KK_CASES:
        raise ValueError(f"unknown case {case!r}; one of {', '.join(KK_CASES)}")
    lowered = word.lower()
    vowels = [ch for ch in lowered if ch in _KK_BACK_VOWELS | _KK_FRONT_VOWELS]
    back = bool(vowels) and vowels[-1] in _KK_BACK_VOWELS
    last = lowered[-1]
    vowel = "а" if back else "е"
    if case == "dative":
        return ("қ" if back else "к") + vowel if last in _KK_VOICELESS else ("ғ" if back else "г") + vowel
    if case == "locative":
        return ("т" if last in _KK_VOICELESS else "д") + vowel
    start = "т" if last in _KK_VOICELESS else "н" if last in _KK_NASAL else "д"
    return start + vowel + "н"


def kk_after_number(n: int, case: str) -> str:
    """"-ға", "-те", "-нан" …: the ending written after the digits of ``n`` ("13:39-ға", "2026-дан")."""
    return "-" + kk_suffix(kk_number_word(n), case)


def _local(moment: dt.datetime) -> dt.datetime:
    return to_local(moment, ALMATY)


def kk_time(moment: dt.datetime, case: str | None = None) -> str:
    """"13:39", or with a case ending: "13:39-ға" (by the minutes as read aloud; by the hour at :00)."""
    local = _local(moment)
    text = f"{local:%H:%M}"
    if case is None:
        return text
    return text + kk_after_number(local.minute or local.hour, case)


def kk_date(day: dt.date, *, year: bool = True) -> str:
    """"2026 жылғы 30 қараша" / "30 қараша"."""
    text = f"{day.day} {KK_MONTHS[day.month - 1]}"
    return f"{day.year} жылғы {text}" if year else text


def when(moment: dt.datetime, locale: str) -> str:
    """"2026 жылғы 25 қараша, 09:00" / "25 ноября 2026, 09:00"."""
    if locale == "kk":
        return f"{kk_date(_local(moment).date())}, {kk_time(moment)}"
    return format_datetime(moment, "d MMMM y, HH:mm", tzinfo=ALMATY, locale=locale)


def short_when(moment: dt.datetime, locale: str) -> str:
    """Day, month and time, no year and no abbreviations: "25 қараша, 09:00" / "25 ноября, 09:00"."""
    if locale == "kk":
        return f"{kk_date(_local(moment).date(), year=False)}, {kk_time(moment)}"
    return format_datetime(moment, "d MMMM, HH:mm", tzinfo=ALMATY, locale=locale)


def day_and_time(moment: dt.datetime, locale: str) -> tuple[str, str]:
    """(day, time) for a sentence: ("29 қараша", "11:23-те") / ("29 ноября", "11:23"); kk's time in the locative."""
    if locale == "kk":
        return kk_date(_local(moment).date(), year=False), kk_time(moment, "locative")
    return format_date(_local(moment).date(), "d MMMM", locale=locale), clock_time(moment, locale)


def until(moment: dt.datetime, locale: str, since: dt.datetime | None = None) -> str:
    """"13:39-ға дейін" / "до 13:39"; with the day when it is not the day of ``since``."""
    same_day = since is not None and _local(since).date() == _local(moment).date()
    if locale == "kk":
        time = kk_time(moment, "dative") + " дейін"
        return time if same_day else f"{kk_date(_local(moment).date(), year=False)}, {time}"
    day = "" if same_day else format_date(_local(moment).date(), "d MMMM", locale=locale) + ", "
    return f"до {day}{clock_time(moment, locale)}"


def clock_time(moment: dt.datetime, locale: str) -> str:
    return format_time(moment, "HH:mm", tzinfo=ALMATY, locale=locale)


def day_name(day: dt.date, locale: str) -> str:
    """"2026 жылғы 24 қараша" / "24 ноября 2026"."""
    if locale == "kk":
        return kk_date(day)
    return format_date(day, "d MMMM y", locale=locale)
