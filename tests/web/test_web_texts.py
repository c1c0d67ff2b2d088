"""The dashboard's texts: every msgid its templates and Python hold (what `pybabel extract -F babel.cfg` finds in
server/web, templates through Babel's jinja2 extractor) is in the web domain's catalogs, translated in kk and ru,
in Cyrillic, with the same placeholders."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg

from core.model import Language
from server.capture_texts import catalog
from server.web.app import NAV
from server.web.labels import ANSWER, METHOD, MODE, STATE, STEP

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER = re.compile(r"\{[a-z_]*\}")
CYRILLIC = re.compile(r"[А-Яа-яЁёӘәҒғҚқҢңӨөҰұҮүҺһІі]")


def dashboard_msgids() -> set[str]:
    """What Babel extracts from server/web with the repository's babel.cfg (templates and N_ marks)."""
    with (ROOT / "babel.cfg").open() as cfg:
        method_map, options_map = parse_mapping_cfg(cfg)
    found = set()
    for _filename, _lineno, message, _comments, _context in extract_from_dir(
            str(ROOT / "server" / "web"), method_map, options_map):
        found.add(message if isinstance(message, str) else message[0])
    return found


def test_extraction_reads_the_templates_and_the_python():
    found = dashboard_msgids()
    assert {"Sign out", "Visits of the day", "Timeline"} <= found  # from templates
    assert {"Day", "in person", "Patient asked: were you there?"} <= found  # N_ in server/web/*.py
    for table in (MODE, STATE, METHOD, ANSWER, STEP):
        assert set(table.values()) <= found
    assert {entry.msgid for entry in NAV} <= found


@pytest.mark.parametrize("language", list(Language))
def test_every_dashboard_text_is_translated(language):
    translated = catalog(language)
    problems = []
    for msgid in sorted(dashboard_msgids()):
        text = translated.get(msgid, "")
        if not text.strip():
            problems.append(f"missing: {msgid!r}")
        elif not CYRILLIC.search(text) and text != "онлайн":
            problems.append(f"not in Cyrillic: {msgid!r} -> {text!r}")
        elif sorted(PLACEHOLDER.findall(text)) != sorted(PLACEHOLDER.findall(msgid)):
            problems.append(f"placeholders differ: {msgid!r} -> {text!r}")
    assert not problems, f"{language.value}:\n" + "\n".join(problems)


def test_kazakh_is_not_the_russian_copied():
    kk, ru = catalog(Language.KK), catalog(Language.RU)
    same = [m for m in dashboard_msgids() if kk.get(m) and kk.get(m) == ru.get(m)]
    # words both languages share (a profession, a borrowed word) may coincide; sentences may not
    assert all(len(kk[m].split()) == 1 for m in same), same
