"""One-time 6-digit visit codes: the patient's alternative to a face photo.

The plain code exists only in memory on its way to the patient's chat; the database keeps an HMAC of
it whose key lives in the environment, so a database dump cannot reveal or forge a code.
"""
from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass

CODE_DIGITS = 6


class CodeOutcome(str, enum.Enum):
    VERIFIED = "verified"
    WRONG = "wrong"
    EXPIRED = "expired"
    LOCKED = "locked"
    NO_CODE = "no_code"
    ALREADY_USED = "already_used"


@dataclass(frozen=True)
class CodePolicy:
    issue_lead: dt.timedelta = dt.timedelta(minutes=15)
    validity: dt.timedelta = dt.timedelta(minutes=10)
    max_attempts: int = 5
    doctor_failures_per_hour: int = 20
    clinic_failures_per_hour: int = 100

    def can_issue(self, now: dt.datetime, visit_start: dt.datetime, window_end: dt.datetime) -> bool:
        return visit_start - self.issue_lead <= now <= window_end

    def expiry(self, issued_at: dt.datetime, window_end: dt.datetime) -> dt.datetime:
        """Valid 10 minutes after sending or until the visit window ends, whichever is later."""
        return max(issued_at + self.validity, window_end)


def generate_code() -> str:
    """6 digits from the OS CSPRNG, uniformly distributed (leading zeros allowed)."""
    return f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"


class CodeHasher:
    """Keyed hash binding a code to one visit and one issuance, so a hash is useless elsewhere."""

    def __init__(self, key: bytes):
        if len(key) < 16:
            raise ValueError("code HMAC key must be at least 16 bytes")
        self._key = key

    def digest(self, visit_id: int, generation: int, code: str) -> str:
        message = f"{visit_id}:{generation}:{code}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def matches(self, visit_id: int, generation: int, code: str, stored: str) -> bool:
        return hmac.compare_digest(self.digest(visit_id, generation, code), stored)


def looks_like_code(text: str) -> bool:
    return len(text) == CODE_DIGITS and text.isascii() and text.isdigit()
