"""API keys for the verification server: a clinic's (its system, webcams, admins) or an auditor's.

A key is shown once, when it is made; the database keeps its public prefix (to find the row) and an
HMAC-SHA256 of the whole key under a pepper from the environment, so a database dump cannot be replayed.
An auditor's key holds the ``audit`` scope only: it reads the evidence of the auditor's clinics and writes nothing
(server.auth refuses it every other route); the auditor's clinics are read with the key on every request, so
removing an auditor or changing the clinics holds at once.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from core.db.repositories import StoredApiKey
from core.errors import Conflict, DomainError, InvalidValue, NotFound
from core.services import Context

KEY_MARK = "rk"
_PREFIX_BYTES = 6  # 12 hex characters: fits api_keys.key_prefix and never contains "_"
USE_RECORDED_EVERY = dt.timedelta(minutes=1)  # last_used_at: one write per key per minute, not one per request
_LIFETIME = re.compile(r"([1-9][0-9]{0,5})([dh])")
_MAX_LIFETIME = dt.timedelta(days=3660)


class Scope(str, enum.Enum):
    CLINIC_SYSTEM = "clinic_system"  # the clinic information system: patients, consent, enrolment, visits, codes
    WEBCAM = "webcam"                # the doctor's webcam client: face and code verification
    ADMIN = "admin"                  # clinic admins: digests, CSV, visit lists
    AUDIT = "audit"                  # an auditor's key, and only that: the evidence export of the auditor's clinics


CLINIC_SCOPES = (Scope.CLINIC_SYSTEM, Scope.WEBCAM, Scope.ADMIN)


@dataclass(frozen=True)
class ApiPrincipal:
    """Who is calling: the key's clinic, what it may do, and the one doctor it is bound to (if any)."""
    key_id: int
    key_prefix: str
    clinic_id: int
    scopes: frozenset[Scope]
    doctor_id: int | None = None


@dataclass(frozen=True)
class AuditorPrincipal:
    """An auditor's key: the auditor, and the clinics it reads (None: every clinic, those added later too)."""
    key_id: int
    key_prefix: str
    auditor_id: int
    clinic_ids: frozenset[int] | None
    scopes: frozenset[Scope] = frozenset({Scope.AUDIT})


@dataclass(frozen=True)
class NewApiKey:
    key: str  # the only time the plain key exists outside the caller's configuration
    principal: ApiPrincipal | AuditorPrincipal
    expires_at: dt.datetime | None = None


@dataclass(frozen=True)
class ApiKeyInfo:
    """What an operator may see of a key: never its hash, never the key."""
    prefix: str
    clinic_id: int | None  # None: an auditor's key
    label: str
    scopes: tuple[str, ...]
    doctor_id: int | None
    created_at: dt.datetime
    expires_at: dt.datetime | None
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None
    auditor_id: int | None = None

    def status(self, now: dt.datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at is not None and now >= self.expires_at else "live"


class ApiKeyExpired(DomainError):
    code = "api_key_expired"

    def __init__(self, prefix: str, expired_at: dt.datetime):
        super().__init__(f"API key {prefix} expired at {expired_at.isoformat(timespec='minutes')}; ask the clinic "
                         "admin for a new key")
        self.expired_at = expired_at


def parse_lifetime(text: str) -> dt.timedelta:
    """``90d`` or ``12h`` (a whole number of days or hours) as a timedelta; InvalidValue otherwise."""
    match = _LIFETIME.fullmatch((text or "").strip().lower())
    lifetime = None
    if match:
        number, unit = int(match.group(1)), match.group(2)
        lifetime = dt.timedelta(days=number) if unit == "d" else dt.timedelta(hours=number)
    if lifetime is None or lifetime > _MAX_LIFETIME:
        raise InvalidValue(f"a key lifetime is a whole number of days or hours up to {_MAX_LIFETIME.days} days, "
                           "like 90d or 12h")
    return lifetime


def _hash(ctx: Context, key: str) -> str:
    return hmac.new(ctx.settings.pepper_bytes(), key.encode(), hashlib.sha256).hexdigest()


def _parse_scopes(scopes: Iterable[str]) -> frozenset[Scope]:
    try:
        parsed = frozenset(Scope(s) for s in scopes)
    except ValueError:
        raise InvalidValue(f"unknown scope; use any of {', '.join(s.value for s in Scope)}") from None
    if not parsed:
        raise InvalidValue("an API key needs at least one scope")
    return parsed


async def create_api_key(ctx: Context, clinic_id: int, scopes: Iterable[str], doctor_id: int | None = None,
                         label: str = "", expires_in: dt.timedelta | None = None) -> NewApiKey:
    """Make a key for a clinic (optionally bound to one of its doctors, optionally expiring) and return it in
    plain text once."""
    parsed = _parse_scopes(scopes)
    if Scope.AUDIT in parsed:
        raise InvalidValue("the audit scope belongs to auditors' keys (rastau add-api-key --auditor N), never to a "
                           "clinic's: a clinic does not audit itself")
    if doctor_id is not None and Scope.ADMIN in parsed:
        raise InvalidValue("an admin key sees the whole clinic; it cannot be bound to one doctor")
    prefix, key, now, expires_at = _new_key(ctx, expires_in)
    async with ctx.uow() as uow:
        await uow.clinics.get(clinic_id)
        if doctor_id is not None:
            await uow.doctors.get(doctor_id, clinic_id)
        key_id = await uow.api_keys.add(clinic_id=clinic_id, key_prefix=prefix, key_hash=_hash(ctx, key),
                                        scopes=[s.value for s in parsed], doctor_id=doctor_id,
                                        label=(label or "").strip()[:200], now=now, expires_at=expires_at)
        await uow.audit.append(now, "admin", "api_key.create", f"api_key:{key_id}",
                               {"clinic": clinic_id, "prefix": prefix, "scopes": sorted(s.value for s in parsed),
                                "doctor": doctor_id, "expires_at": expires_at.isoformat() if expires_at else None},
                               clinic_id=clinic_id)
        await uow.commit()
    return NewApiKey(key, ApiPrincipal(key_id, prefix, clinic_id, parsed, doctor_id), expires_at)


async def create_auditor_key(ctx: Context, auditor_id: int, label: str = "",
                             expires_in: dt.timedelta | None = None) -> NewApiKey:
    """Make a key for an auditor (the audit scope only) and return it in plain text once; audit-logged in the
    operator's chain."""
    prefix, key, now, expires_at = _new_key(ctx, expires_in)
    async with ctx.uow() as uow:
        auditor = await uow.auditors.get(auditor_id)
        if auditor.removed_at is not None:
            raise Conflict(f"auditor {auditor_id} was removed; add the auditor again for a new key")
        key_id = await uow.api_keys.add(clinic_id=None, auditor_id=auditor_id, key_prefix=prefix,
                                        key_hash=_hash(ctx, key), scopes=[Scope.AUDIT.value], doctor_id=None,
                                        label=(label or "").strip()[:200], now=now, expires_at=expires_at)
        await uow.audit.append(now, "admin", "api_key.create", f"api_key:{key_id}",
                               {"auditor": auditor_id, "prefix": prefix, "scopes": [Scope.AUDIT.value],
                                "expires_at": expires_at.isoformat() if expires_at else None}, clinic_id=None)
        await uow.commit()
    clinics = None if auditor.all_clinics else frozenset(auditor.clinic_ids)
    return NewApiKey(key, AuditorPrincipal(key_id, prefix, auditor_id, clinics), expires_at)


def _new_key(ctx: Context, expires_in: dt.timedelta | None) -> tuple[str, str, dt.datetime, dt.datetime | None]:
    """A fresh key: its prefix, the key itself, now, and when it expires."""
    if expires_in is not None and expires_in <= dt.timedelta(0):
        raise InvalidValue("a key's lifetime must be positive")
    prefix = secrets.token_hex(_PREFIX_BYTES)
    now = ctx.clock.now()
    return (prefix, f"{KEY_MARK}_{prefix}_{secrets.token_urlsafe(32)}", now,
            now + expires_in if expires_in is not None else None)


def split_key(presented: str) -> str | None:
    """The public prefix of a well-formed key, else None."""
    mark, _, rest = (presented or "").partition("_")
    prefix, _, secret = rest.partition("_")
    if (mark != KEY_MARK or len(prefix) != 2 * _PREFIX_BYTES or not secret or len(presented) > 200
            or not presented.isascii()):
        return None
    return prefix


async def authenticate(ctx: Context, presented: str) -> ApiPrincipal | AuditorPrincipal | None:
    """The principal for a live key, or None; ApiKeyExpired for the right key past its expiry. The hash
    comparison is constant-time and always performed, and expiry is checked against the clock on every use.
    The key's row is read with one statement, except a clinic key's on a server on PostgreSQL, which is kept in
    the process (core.db.key_cache) while the database's notifications of key changes reach it: there a
    revocation, expiry, scope change or removal holds from the moment its notification arrives (normally within a
    millisecond of the commit), and while the listener is down every lookup reads the database. An auditor's key
    is always read, with a second statement for the auditor and its clinics, so a removed auditor or a narrowed
    scope holds at once. The key's last use is written only when the recorded one is older than
    USE_RECORDED_EVERY."""
    prefix = split_key(presented)
    cache = ctx.key_cache
    row = None
    token = None  # set when the row is read from the database with a cache to keep it in
    if prefix is not None:
        row = cache.get(prefix) if cache is not None else None
        if row is None:
            token = cache.token() if cache is not None else None  # before the read: a later change wins
            async with ctx.uow(read_only=True, snapshot=False) as uow:  # one statement: no transaction around it
                row = await uow.api_keys.by_prefix(prefix)
    expected = row.key_hash if row is not None else "0" * 64
    candidate = _hash(ctx, presented if prefix is not None else "")
    if not hmac.compare_digest(candidate, expected) or row is None or row.revoked_at is not None:
        return None
    if cache is not None and token is not None:
        cache.put(row, token)
    now = ctx.clock.now()
    if row.expires_at is not None and now >= row.expires_at:
        raise ApiKeyExpired(row.key_prefix, row.expires_at)
    stale = now - USE_RECORDED_EVERY
    if row.last_used_at is None or row.last_used_at < stale:
        async with ctx.uow() as uow:
            await uow.api_keys.touch(row.id, now, stale)
            await uow.commit()
        if cache is not None:
            cache.used(row.key_prefix, now)
    if row.auditor_id is not None:
        async with ctx.uow(read_only=True) as uow:
            auditor = await uow.auditors.get(row.auditor_id)
        if auditor.removed_at is not None:
            return None
        clinics = None if auditor.all_clinics else frozenset(auditor.clinic_ids)
        return AuditorPrincipal(row.id, row.key_prefix, auditor.id, clinics)
    assert row.clinic_id is not None, "a key is a clinic's or an auditor's (CHECK one_owner)"
    return ApiPrincipal(row.id, row.key_prefix, row.clinic_id, frozenset(Scope(s) for s in row.scopes), row.doctor_id)


async def list_api_keys(ctx: Context, clinic_id: int | None = None) -> list[ApiKeyInfo]:
    async with ctx.uow(read_only=True) as uow:
        if clinic_id is not None:
            await uow.clinics.get(clinic_id)
        rows = await uow.api_keys.list(clinic_id)
    return [_info(r) for r in rows]


def _info(row: StoredApiKey) -> ApiKeyInfo:
    return ApiKeyInfo(prefix=row.key_prefix, clinic_id=row.clinic_id, label=row.label,
                      scopes=row.scopes, doctor_id=row.doctor_id, created_at=row.created_at,
                      expires_at=row.expires_at, last_used_at=row.last_used_at, revoked_at=row.revoked_at,
                      auditor_id=row.auditor_id)


async def revoke_api_key(ctx: Context, key_prefix: str) -> ApiKeyInfo:
    """Revoke the key with this prefix (a whole key pasted by mistake is reduced to its prefix); audit-logged."""
    prefix = split_key(key_prefix) or (key_prefix or "").strip().lower()
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        row = await uow.api_keys.by_prefix(prefix)
        if row is None:
            raise NotFound(f"no API key with prefix {prefix[:2 * _PREFIX_BYTES]}; "
                           "`rastau list-api-keys` shows the prefixes")
        if row.revoked_at is not None or not await uow.api_keys.revoke(prefix, now):
            raise Conflict(f"API key {prefix} was already revoked")
        await uow.audit.append(now, "admin", "api_key.revoke", f"api_key:{row.id}",
                               {"clinic": row.clinic_id, "prefix": prefix} if row.auditor_id is None
                               else {"auditor": row.auditor_id, "prefix": prefix}, clinic_id=row.clinic_id)
        await uow.commit()
    return dataclasses.replace(_info(row), revoked_at=now)
