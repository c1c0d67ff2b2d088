import datetime as dt

import pytest

from core.errors import InvalidIin, InvalidPhone
from core.iin import check_digit, mask_iin, parse_iin
from core.phone import normalise_phone


@pytest.mark.parametrize("iin,birth,sex", [
    ("900101300017", dt.date(1990, 1, 1), "male"),
    ("850315400015", dt.date(1985, 3, 15), "female"),
    ("021231500015", dt.date(2002, 12, 31), "male"),
    ("880725400129", dt.date(1988, 7, 25), "female"),
])
def test_valid_iin_gives_birth_date_and_sex(iin, birth, sex):
    facts = parse_iin(iin)
    assert (facts.birth_date, facts.sex) == (birth, sex)


def test_wrong_check_digit_is_refused():
    with pytest.raises(InvalidIin, match="check digit"):
        parse_iin("900101300018")


def test_second_weight_set_is_used_when_first_gives_ten():
    # first weights on 90010131050 give 10, so the check digit comes from the second set (3,4,...,1,2)
    base = "90010131050"
    assert sum(int(c) * w for c, w in zip(base, range(1, 12))) % 11 == 10
    second = sum(int(c) * w for c, w in zip(base, (3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2))) % 11
    assert check_digit(base) == second == 6
    assert parse_iin(base + "6").birth_date == dt.date(1990, 1, 1)
    with pytest.raises(InvalidIin):
        parse_iin(base + "0")


def test_iin_invalid_when_both_weight_sets_give_ten():
    assert check_digit("90010131052") is None
    for last in "0123456789":
        with pytest.raises(InvalidIin):
            parse_iin("90010131052" + last)


@pytest.mark.parametrize("raw,why", [("90010130001", "12 digits"), ("9001013000170", "12 digits"),
                                     ("90010130001a", "digits only"), ("9001 0130 0017", "digits only"),
                                     ("", "12 digits"), ("９００１０１３０００１７", "digits only")])
def test_malformed_iin_says_what_is_wrong(raw, why):
    with pytest.raises(InvalidIin, match=why):
        parse_iin(raw)


@pytest.mark.parametrize("century", ["0", "7", "9"])
def test_a_century_digit_outside_1_to_6_is_refused_even_with_a_good_check_digit(century):
    first = next(f"900101{century}{serial:04d}" for serial in range(10_000)
                 if check_digit(f"900101{century}{serial:04d}") is not None)
    with pytest.raises(InvalidIin, match=r"digit 7 \(century and sex\) must be 1-6"):
        parse_iin(first + str(check_digit(first)))


def test_an_iin_that_is_not_text_is_refused_plainly():
    with pytest.raises(InvalidIin, match="string of 12 digits"):
        parse_iin(900101300017)


def test_impossible_birth_date_is_refused():
    base = "901301300"  # month 13
    for tail in range(100):
        candidate = base + f"{tail:02d}"
        cd = check_digit(candidate)
        if cd is not None:
            with pytest.raises(InvalidIin, match="birth date"):
                parse_iin(candidate + str(cd))
            return
    pytest.fail("no candidate found")


def test_mask_shows_only_last_four():
    assert mask_iin("900101300017") == "********0017"


@pytest.mark.parametrize("raw", ["8 (701) 123-45-67", "+7 701 1234567", "87011234567", "+7(701)123 45 67",
                                 "77011234567", "7011234567", " +7-701-123-45-67 "])
def test_messy_phone_forms_normalise(raw):
    assert normalise_phone(raw) == "+77011234567"


@pytest.mark.parametrize("raw,why", [("+380501234567", "Kazakhstan"), ("8701123456", "10 digits"),
                                     ("+7 701 123", "10 digits"), ("+7 495 123 45 67", "not a Kazakhstan"),
                                     ("", "empty"), ("phone", "only digits")])
def test_bad_phone_has_clear_error(raw, why):
    with pytest.raises(InvalidPhone, match=why):
        normalise_phone(raw)
