"""What a person's or clinic's name may contain: printable text only.

Refused: Unicode control characters (Cc: CR, LF, TAB, NUL, C1), format characters (Cf: bidirectional overrides
and isolates U+202A-202E and U+2066-2069, zero-width spaces and joiners, soft hyphen), line and paragraph
separators (Zl, Zp) and lone surrogates (Cs). Names with these reach the digest, CSV files and chat messages
looking like something else (``U+202E`` reverses what follows) or breaking lines. One rule for the API, the
operator CLI and rastau-enrol.
"""
from __future__ import annotations

import unicodedata

from core.errors import InvalidName

_REFUSED = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def clean_name(value: str | None, field: str = "full_name") -> str:
    """The name without surrounding spaces; InvalidName (naming ``field``) when empty or not printable text."""
    name = (value or "").strip()
    if not name:
        raise InvalidName(f"{field} is empty", field)
    bad = next((ch for ch in name if unicodedata.category(ch) in _REFUSED), None)
    if bad is not None:
        raise InvalidName(f"{field} contains the invisible or control character U+{ord(bad):04X}; send the name as "
                          "plain text without line breaks, tabs or direction marks", field)
    return name


def short_name(full_name: str) -> str:
    """The surname and initials, as a family chat tells its patients apart: "Ковалева Мария Петровна" →
    "Ковалева М. П.". Only the official three-part form (surname, name, patronymic) is shortened: in a two-word name
    nobody can tell the surname from the given name ("Дмитрий Ковалев"), so it stays whole, as does one word."""
    words = full_name.split()
    if len(words) < 3:
        return " ".join(words)
    return " ".join([words[0], *(w if w.endswith(".") and len(w) <= 3 else w[0].upper() + "." for w in words[1:])])
