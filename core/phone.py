"""Kazakh phone numbers, normalised to ``+7XXXXXXXXXX`` from what people actually type."""
from __future__ import annotations

import re

from core.errors import InvalidPhone

_SEPARATORS = re.compile(r"[\s\-().]")


def normalise_phone(raw: str) -> str:
    """``8 (701) 123-45-67``, ``+7 701 1234567``, ``77011234567`` → ``+77011234567``.

    Kazakhstan shares +7 with Russia; numbers +7 3xx / +7 4xx-9xx (except 7xx) are Russian and refused.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidPhone("phone number is empty")
    compact = _SEPARATORS.sub("", raw.strip())
    if compact.startswith("+"):
        body = compact[1:]
        if not body.startswith("7"):
            raise InvalidPhone(f"only Kazakhstan numbers (+7) are accepted, got +{body[:3]}…")
    elif compact.startswith("8"):
        if len(compact) != 11:
            raise InvalidPhone(f"a Kazakhstan number has 10 digits after 8 or +7 (e.g. 8 701 123 45 67); "
                               f"got {len(compact) - 1}")
        body = "7" + compact[1:]
    else:
        body = compact
    if not body.isascii() or not body.isdigit():
        raise InvalidPhone("phone number may contain only digits, spaces, dashes, brackets and a leading +")
    if len(body) == 10:
        body = "7" + body
    if len(body) != 11 or not body.startswith("7"):
        after_7 = len(body) - 1 if body.startswith("7") else len(body)
        raise InvalidPhone(f"a Kazakhstan number has 10 digits after +7 (e.g. +7 701 123 45 67); got {after_7}")
    if body[1] not in "67":
        raise InvalidPhone("not a Kazakhstan number: after +7 it must start with 7 (mobile) or 6 (landline)")
    return "+" + body
