"""Kazakhstan's individual identification number (IIN / ЖСН / ИИН).

Digits 1-6 are the birth date (YYMMDD), digit 7 the century and sex, digit 12 a check digit.
An IIN is personal data: use :func:`mask_iin` for anything a human or a log will read.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from core.errors import InvalidIin

_FIRST_WEIGHTS = tuple(range(1, 12))
_SECOND_WEIGHTS = (3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2)
# digit 7: 1/2 = 19th century, 3/4 = 20th, 5/6 = 21st; odd = male, even = female
_CENTURY = {1: 1800, 2: 1800, 3: 1900, 4: 1900, 5: 2000, 6: 2000}


@dataclass(frozen=True)
class IinFacts:
    iin: str
    birth_date: dt.date
    sex: str  # "male" | "female"


def check_digit(first_eleven: str) -> int | None:
    """The 12th digit for these 11 digits, or None when both weight sets give 10 (no valid IIN)."""
    digits = [int(c) for c in first_eleven]
    for weights in (_FIRST_WEIGHTS, _SECOND_WEIGHTS):
        rest = sum(d * w for d, w in zip(digits, weights)) % 11
        if rest != 10:
            return rest
    return None


def parse_iin(raw: str) -> IinFacts:
    """Validate an IIN and derive birth date and sex; raise InvalidIin saying what is wrong."""
    if not isinstance(raw, str):
        raise InvalidIin("IIN must be a string of 12 digits")
    iin = raw.strip()
    if not iin.isascii() or not iin.isdigit():
        raise InvalidIin("IIN must contain digits only (12 digits, no spaces or letters)")
    if len(iin) != 12:
        raise InvalidIin(f"IIN must have 12 digits, got {len(iin)}")
    expected = check_digit(iin[:11])
    if expected is None or expected != int(iin[11]):
        raise InvalidIin("IIN check digit does not match; please re-check the number")
    century_digit = int(iin[6])
    if century_digit not in _CENTURY:
        raise InvalidIin("IIN digit 7 (century and sex) must be 1-6")
    year = _CENTURY[century_digit] + int(iin[0:2])
    try:
        birth = dt.date(year, int(iin[2:4]), int(iin[4:6]))
    except ValueError:
        raise InvalidIin("IIN digits 1-6 are not a valid birth date (YYMMDD)") from None
    return IinFacts(iin=iin, birth_date=birth, sex="male" if century_digit % 2 else "female")


def make_iin(birth: dt.date, male: bool, serial: int) -> str:
    """A valid IIN for this birth date and sex, for seed data and demos: the first serial from `serial` on
    whose 11 digits have a check digit (about 1 in 121 have none)."""
    century = (3 if birth.year < 2000 else 5) + (0 if male else 1)
    for candidate in range(serial, 10_000):
        first = f"{birth:%y%m%d}{century}{candidate:04d}"
        if (digit := check_digit(first)) is not None:
            return first + str(digit)
    raise ValueError(f"no valid IIN with a serial from {serial} to 9999")


def mask_iin(iin: str) -> str:
    """All but the last 4 digits hidden: enough for a clerk to match, useless to a thief."""
    return "*" * max(len(iin) - 4, 0) + iin[-4:]


# --- reduced records (issue 16): after the billing-audit period the payer keeps the visit, not the person's number --
_BASE36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def reduce_iin(iin: str, patient_id: int) -> str:
    """What a patient's IIN becomes after the billing-audit period: the birth date and the century-and-sex digit
    (what the payer's rules on age and sex read) and a ``*``, then 4 characters of the patient's row id (base 36,
    so two reduced patients of one clinic born on one day stay apart). The serial and check digit are gone."""
    n, tail = patient_id % 36 ** 4, ""
    for _ in range(4):
        n, rest = divmod(n, 36)
        tail = _BASE36[rest] + tail
    return iin[:7] + "*" + tail


def is_reduced(iin: str) -> bool:
    return len(iin) == 12 and iin[7] == "*"


def reduced_facts(iin: str) -> IinFacts:
    """Birth date and sex of a reduced IIN (its first 7 digits)."""
    century_digit = int(iin[6])
    birth = dt.date(_CENTURY[century_digit] + int(iin[0:2]), int(iin[2:4]), int(iin[4:6]))
    return IinFacts(iin=iin, birth_date=birth, sex="male" if century_digit % 2 else "female")
