"""Idempotency keys: a client retrying a write after a timeout gets the first answer again, not a second row.

The first response is stored in the same transaction as the row it describes, so either both exist or neither;
a concurrent twin with the same key loses on the table's primary key and then replays the winner's answer.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.db.uow import UnitOfWork
from core.errors import Conflict, InvalidValue
from core.services import Context

MAX_KEY_LENGTH = 200


class IdempotencyKeyReused(Conflict):
    code = "idempotency_key_reused"


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: str


def check_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise InvalidValue(f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable ASCII characters (a UUID is ideal)")
    return key


def fingerprint(payload: Any) -> str:
    """Hash of the request's meaning: key order and whitespace do not matter."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def replay(ctx: Context, clinic_id: int, key: str, request_hash: str) -> StoredResponse | None:
    """The stored answer for this key, None for a new key; a different request under a used key is refused."""
    async with ctx.uow() as uow:
        row = await uow.idempotency.get(clinic_id, key)
    if row is None:
        return None
    if row.request_hash != request_hash:
        raise IdempotencyKeyReused("this Idempotency-Key was already used with a different request body; "
                                   "use a new key for a new request")
    return StoredResponse(row.response_status, row.response_body)


@dataclass
class IdempotentWrite:
    """Given to a use case, which calls :meth:`store` inside its own transaction before committing."""
    clinic_id: int
    key: str
    request_hash: str
    render: Callable[[Any], tuple[int, str]]
    response: StoredResponse | None = None

    async def store(self, uow: UnitOfWork, result: Any, now: dt.datetime) -> None:
        status, body = self.render(result)
        await uow.idempotency.add(clinic_id=self.clinic_id, key=self.key, request_hash=self.request_hash,
                                  status=status, body=body, now=now)
        self.response = StoredResponse(status, body)
