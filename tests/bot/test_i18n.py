"""The catalogs: complete in kk and ru, placeholders intact, plural forms right, nothing stale or missing."""
from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.frontend import CommandLineInterface
from babel.messages.pofile import read_po

from bot.i18n import LANGUAGES, LOCALES_DIR, ROOT, compile_catalogs, make_i18n, ngettext, when

PLACEHOLDER = re.compile(r"\{[a-z_]+\}|%\([a-z_]+\)[sd]")
CYRILLIC = re.compile(r"[А-Яа-яЁёӘәҒғҚқҢңӨөҰұҮүҺһІі]")
LATIN_WORD = re.compile(r"\b[A-Za-z]{4,}\b")
ALLOWED_LATIN = {"Telegram", "WhatsApp", "code", "help", "start", "stop", "visits", "digest", "language", "privacy",
                 "CSV", "mydata", "withdraw"}


def catalog(lang):
    with (LOCALES_DIR / lang / "LC_MESSAGES" / "messages.po").open("rb") as fh:
        return read_po(fh, locale=lang)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_msgid_is_translated_with_the_same_placeholders(lang):
    cat = catalog(lang)
    problems = []
    for message in cat:
        if not message.id:
            continue
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        if message.fuzzy or not all(strings):
            problems.append(f"untranslated or fuzzy: {ids[0]!r}")
            continue
        expected = sorted(set(PLACEHOLDER.findall(ids[0])))
        for s in strings:
            if sorted(set(PLACEHOLDER.findall(s))) != expected:
                problems.append(f"placeholders differ in {ids[0]!r}: {s!r}")
            if message.id != "code" and not CYRILLIC.search(s) and s.lower() not in ("онлайн",):
                problems.append(f"not in Cyrillic: {s!r}")
            english = set(LATIN_WORD.findall(PLACEHOLDER.sub("", re.sub(r"<[^>]+>", "", s)))) - ALLOWED_LATIN
            if english:
                problems.append(f"English words {sorted(english)} leak in {s!r}")
    assert not problems, "\n".join(problems)


def test_plural_forms_follow_cldr():
    assert catalog("ru").num_plurals == 3
    assert catalog("kk").num_plurals == 2
    for message in catalog("ru"):
        if isinstance(message.id, tuple):
            assert len(message.string) == 3, message.id
    i18n = make_i18n()
    with i18n.context():
        with i18n.use_locale("ru"):
            got = [ngettext("{n} visit", "{n} visits", n).format(n=n) for n in (1, 3, 5, 11, 21, 104)]
        assert got == ["1 приём", "3 приёма", "5 приёмов", "11 приёмов", "21 приём", "104 приёма"]
        with i18n.use_locale("kk"):
            assert ngettext("{n} visit", "{n} visits", 7).format(n=7) == "7 қабылдау"


def babel_extract(pot: Path) -> Catalog:
    """What the maintainer's ``pybabel extract -F babel.cfg -o locales/messages.pot bot`` finds (run from the
    repository's root)."""
    CommandLineInterface().run(["pybabel", "--quiet", "extract", "-F", "babel.cfg", "-o", str(pot), "bot"])
    with pot.open("rb") as fh:
        return read_po(fh)


def test_every_string_in_the_code_is_in_both_catalogs(tmp_path, monkeypatch):
    """Re-extract bot/ with Babel's own command and mapping, and compare: a new _() without a translation fails
    here."""
    monkeypatch.chdir(ROOT)
    extracted = {m.id for m in babel_extract(tmp_path / "messages.pot") if m.id}
    assert extracted, "extraction found nothing: keywords or paths are wrong"
    for lang in LANGUAGES:
        in_catalog = {m.id for m in catalog(lang) if m.id}
        assert not extracted - in_catalog, f"{lang}: missing {sorted(extracted - in_catalog, key=str)}"
        assert not in_catalog - extracted, f"{lang}: obsolete {sorted(in_catalog - extracted, key=str)}"


def test_mo_is_rebuilt_when_missing_or_older_than_po(tmp_path):
    copy = tmp_path / "locales"
    shutil.copytree(LOCALES_DIR, copy, ignore=shutil.ignore_patterns("*.mo"))
    built = compile_catalogs(copy)
    assert sorted(p.parent.parent.name for p in built) == sorted(LANGUAGES)
    assert compile_catalogs(copy) == [], "fresh .mo files are left alone"
    po = copy / "ru" / "LC_MESSAGES" / "messages.po"
    po.write_text(po.read_text(encoding="utf-8").replace('msgstr "Спасибо!"', 'msgstr "Большое спасибо!"'),
                  encoding="utf-8")
    mo = po.with_suffix(".mo")
    os.utime(mo, (po.stat().st_mtime - 10, po.stat().st_mtime - 10))
    assert compile_catalogs(copy) == [mo]
    i18n = make_i18n(copy)
    assert i18n.gettext("Thank you!", locale="ru") == "Большое спасибо!"


def test_dates_are_local_and_localised():
    moment = dt.datetime(2026, 11, 25, 4, 30, tzinfo=dt.UTC)  # 09:30 in Almaty
    assert when(moment, "ru") == "25 ноября 2026, 09:30"
    assert when(moment, "kk") == "2026 жылғы 25 қараша, 09:30"


# --- Kazakh dates and times, against examples written out by hand -------------------------------------------------

def _almaty(hour: int, minute: int, day: int = 30) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, minute, tzinfo=dt.UTC) - dt.timedelta(hours=5)


@pytest.mark.parametrize(("hour", "minute", "dative", "locative", "ablative"), [
    (13, 39, "13:39-ға", "13:39-да", "13:39-дан"),    # тоғыз: back vowel, voiced
    (13, 40, "13:40-қа", "13:40-та", "13:40-тан"),    # қырық: back vowel, voiceless
    (13, 43, "13:43-ке", "13:43-те", "13:43-тен"),    # үш: front vowel, voiceless
    (11, 23, "11:23-ке", "11:23-те", "11:23-тен"),    # үш
    (9, 5, "09:05-ке", "09:05-те", "09:05-тен"),      # бес
    (14, 6, "14:06-ға", "14:06-да", "14:06-дан"),     # алты: ends in a vowel
    (8, 20, "08:20-ға", "08:20-да", "08:20-дан"),     # жиырма
    (12, 50, "12:50-ге", "12:50-де", "12:50-ден"),    # елу: front, ends in a vowel
    (10, 31, "10:31-ге", "10:31-де", "10:31-ден"),    # бір
    (16, 42, "16:42-ге", "16:42-де", "16:42-ден"),    # екі
    (17, 44, "17:44-ке", "17:44-те", "17:44-тен"),    # төрт
    (18, 47, "18:47-ге", "18:47-де", "18:47-ден"),    # жеті
    (19, 58, "19:58-ге", "19:58-де", "19:58-ден"),    # сегіз
    (15, 10, "15:10-ға", "15:10-да", "15:10-нан"),    # он: nasal, so "-нан"
    (15, 30, "15:30-ға", "15:30-да", "15:30-дан"),    # отыз
    (10, 0, "10:00-ға", "10:00-да", "10:00-нан"),     # :00 is read by the hour: он
    (13, 0, "13:00-ке", "13:00-те", "13:00-тен"),     # он үш
    (18, 0, "18:00-ге", "18:00-де", "18:00-ден"),     # он сегіз
    (0, 0, "00:00-ге", "00:00-де", "00:00-ден"),      # нөл
])
def test_kazakh_time_takes_the_case_ending_of_the_number_as_read_aloud(hour, minute, dative, locative, ablative):
    from bot.i18n import kk_time
    moment = _almaty(hour, minute)
    assert (kk_time(moment, "dative"), kk_time(moment, "locative"), kk_time(moment, "ablative")) == \
        (dative, locative, ablative)


@pytest.mark.parametrize(("n", "dative", "locative"), [
    (1, "-ге", "-де"), (2, "-ге", "-де"), (3, "-ке", "-те"), (6, "-ға", "-да"), (9, "-ға", "-да"),
    (40, "-қа", "-та"), (60, "-қа", "-та"), (70, "-ке", "-те"), (80, "-ге", "-де"), (90, "-ға", "-да"),
    (100, "-ге", "-де"), (2000, "-ға", "-да"), (2026, "-ға", "-да"), (2025, "-ке", "-те"),
])
def test_kazakh_case_ending_after_any_number(n, dative, locative):
    from bot.i18n import kk_after_number
    assert (kk_after_number(n, "dative"), kk_after_number(n, "locative")) == (dative, locative)


def test_kazakh_dates_are_written_the_kazakh_way_without_abbreviations():
    from bot.i18n import day_and_time, day_name, short_when, until
    moment = _almaty(13, 39)
    assert when(moment, "kk") == "2026 жылғы 30 қараша, 13:39"
    assert short_when(moment, "kk") == "30 қараша, 13:39"
    assert "." not in short_when(moment, "kk") and "." not in short_when(moment, "ru"), "no «қар.» / «нояб.»"
    assert short_when(moment, "ru") == "30 ноября, 13:39"
    assert day_name(dt.date(2026, 1, 5), "kk") == "2026 жылғы 5 қаңтар"
    assert day_name(dt.date(2026, 1, 5), "ru") == "5 января 2026"
    assert until(moment, "kk", since=_almaty(13, 0)) == "13:39-ға дейін"
    assert until(moment, "ru", since=_almaty(13, 0)) == "до 13:39"
    assert until(_almaty(0, 10, day=30), "kk", since=_almaty(23, 50, day=29)) == "30 қараша, 00:10-ға дейін"
    assert until(_almaty(0, 10, day=30), "ru", since=_almaty(23, 50, day=29)) == "до 30 ноября, 00:10"
    assert day_and_time(_almaty(11, 23, day=29), "kk") == ("29 қараша", "11:23-те")
    assert day_and_time(_almaty(11, 23, day=29), "ru") == ("29 ноября", "11:23")
