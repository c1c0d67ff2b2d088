"""Per-clinic API keys for the verification server.

A key is shown once, when it is made; the database keeps its public prefix (to find the row) and an
HMAC-SHA256 of the whole key under a pepper from the environment, so a database dump cannot be replayed.
"""
from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from core.errors import InvalidValue, NotFound
from core.services import Context

KEY_MARK = "rk"
_PREFIX_BYTES = 6  # 12 hex characters: fits api_keys.key_prefix and never contains "_"


class Scope(str, enum.Enum):
    CLINIC_SYSTEM = "clinic_system"  # the clinic information system: patients, consent, enrolment, visits, codes
    WEBCAM = "webcam"                # the doctor's webcam client: face and code verification
    ADMIN = "admin"                  # clinic admins: digests, CSV, visit lists


@dataclass(frozen=True)
class ApiPrincipal:
    """Who is calling: the key's clinic, what it may do, and the one doctor it is bound to (if any)."""
    key_id: int
    key_prefix: str
    clinic_id: int
    scopes: frozenset[Scope]
    doctor_id: int | None = None


@dataclass(frozen=True)
class NewApiKey:
    key: str  # the only time the plain key exists outside the caller's configuration
    principal: ApiPrincipal


def _hash(ctx: Context, key: str) -> str:
    return hmac.new(ctx.settings.pepper_bytes(), key.encode(), hashlib.sha256).hexdigest()


def _parse_scopes(scopes) -> frozenset[Scope]:
    try:
        parsed = frozenset(Scope(s) for s in scopes)
    except ValueError:
        raise InvalidValue(f"unknown scope; use any of {', '.join(s.value for s in Scope)}") from None
    if not parsed:
        raise InvalidValue("an API key needs at least one scope")
    return parsed


async def create_api_key(ctx: Context, clinic_id: int, scopes, doctor_id: int | None = None,
                         label: str = "") -> NewApiKey:
    """Make a key for a clinic (optionally bound to one of its doctors) and return it in plain text once."""
    parsed = _parse_scopes(scopes)
    if doctor_id is not None and Scope.ADMIN in parsed:
        raise InvalidValue("an admin key sees the whole clinic; it cannot be bound to one doctor")
    prefix = secrets.token_hex(_PREFIX_BYTES)
    key = f"{KEY_MARK}_{prefix}_{secrets.token_urlsafe(32)}"
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        await uow.clinics.get(clinic_id)
        if doctor_id is not None:
            await uow.doctors.get(doctor_id, clinic_id)
        key_id = await uow.api_keys.add(clinic_id=clinic_id, key_prefix=prefix, key_hash=_hash(ctx, key),
                                        scopes=",".join(sorted(s.value for s in parsed)), doctor_id=doctor_id,
                                        label=(label or "").strip()[:200], now=now)
        await uow.audit.append(now, "admin", "api_key.create", f"api_key:{key_id}",
                               {"clinic": clinic_id, "prefix": prefix, "scopes": sorted(s.value for s in parsed),
                                "doctor": doctor_id})
        await uow.commit()
    return NewApiKey(key, ApiPrincipal(key_id, prefix, clinic_id, parsed, doctor_id))


def split_key(presented: str) -> str | None:
    """The public prefix of a well-formed key, else None."""
    mark, _, rest = (presented or "").partition("_")
    prefix, _, secret = rest.partition("_")
    if (mark != KEY_MARK or len(prefix) != 2 * _PREFIX_BYTES or not secret or len(presented) > 200
            or not presented.isascii()):
        return None
    return prefix


async def authenticate(ctx: Context, presented: str) -> ApiPrincipal | None:
    """The principal for a live key, or None. The hash comparison is constant-time and always performed."""
    prefix = split_key(presented)
    row = None
    if prefix is not None:
        async with ctx.uow() as uow:
            row = await uow.api_keys.by_prefix(prefix)
    expected = row.key_hash if row is not None else "0" * 64
    candidate = _hash(ctx, presented if prefix is not None else "")
    if not hmac.compare_digest(candidate, expected) or row is None or row.revoked_at is not None:
        return None
    return ApiPrincipal(row.id, row.key_prefix, row.clinic_id, frozenset(Scope(s) for s in row.scopes.split(",")),
                        row.doctor_id)


async def revoke_api_key(ctx: Context, key_prefix: str) -> None:
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        if not await uow.api_keys.revoke(key_prefix, now):
            raise NotFound(f"no live API key with prefix {key_prefix}")
        await uow.audit.append(now, "admin", "api_key.revoke", f"api_key:{key_prefix}", {})
        await uow.commit()
