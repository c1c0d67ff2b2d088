"""Hash-chained audit records: each row's hash covers its content and the previous row's hash,
so editing or deleting a row in the middle breaks every hash after it."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    at: str  # ISO-8601 UTC, exactly as stored
    actor: str
    action: str
    subject: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


def chain_hash(seq: int, at: str, actor: str, action: str, subject: str, details: dict[str, Any],
               prev_hash: str) -> str:
    body = json.dumps([seq, at, actor, action, subject, details, prev_hash],
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class ChainBreak:
    seq: int
    reason: str


def find_break(records: list[AuditRecord]) -> ChainBreak | None:
    """The first row where the chain does not hold, or None when it is intact."""
    prev, expected_seq = GENESIS, 1
    for rec in records:
        if rec.seq != expected_seq:
            return ChainBreak(expected_seq, f"row {expected_seq} is missing (next row found is {rec.seq})")
        if rec.prev_hash != prev:
            return ChainBreak(rec.seq, f"row {rec.seq} does not point to the hash of row {rec.seq - 1}")
        if chain_hash(rec.seq, rec.at, rec.actor, rec.action, rec.subject, rec.details, rec.prev_hash) != rec.hash:
            return ChainBreak(rec.seq, f"row {rec.seq} was altered: its content no longer matches its hash")
        prev, expected_seq = rec.hash, rec.seq + 1
    return None
