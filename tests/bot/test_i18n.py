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
                 "CSV"}


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
    assert when(moment, "kk") == "25 қараша 2026, 09:30"
