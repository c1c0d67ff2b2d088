"""Hash-chained audit records, one chain per clinic: each row's hash covers its content and the previous row's
hash, so editing or deleting a row in the middle breaks every hash after it.

Every clinic's records form a chain of their own (``clinic:<id>``), so one clinic's history is verifiable alone and
writes of different clinics never wait on one head. Records about no single clinic (a chat linked or stopped, which
may reach several clinics) go to the ``operator`` chain. The chain written before per-clinic chains existed
(revision 0006) is kept verbatim, closed, as the ``global`` chain. A chain's first row points to a genesis hash
derived from the chain's name, so a row copied into another chain does not fit there.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64  # what the global chain's first row points to
OPERATOR_CHAIN = "operator"
GLOBAL_CHAIN = "global"  # every record before revision 0006; no row is added to it any more


def clinic_chain(clinic_id: int) -> str:
    return f"clinic:{clinic_id}"


def chain_of(clinic_id: int | None) -> str:
    """The chain a record goes to: its clinic's, or the operator's when it is about no single clinic."""
    return clinic_chain(clinic_id) if clinic_id is not None else OPERATOR_CHAIN


def genesis(chain: str) -> str:
    """What the chain's first row points to: a hash of the chain's name (all zeros for the closed global chain)."""
    if chain == GLOBAL_CHAIN:
        return GENESIS
    return hashlib.sha256(f"rastau audit chain {chain}".encode()).hexdigest()


@dataclass(frozen=True)
class AuditRecord:
    chain: str
    seq: int
    at: str  # ISO-8601 UTC, exactly as stored
    actor: str
    action: str
    subject: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class ChainHead:
    """Where a chain ends: its last row's number and hash (what a checkpoint kept outside the database signs)."""
    chain: str
    seq: int
    hash: str


def chain_hash(seq: int, at: str, actor: str, action: str, subject: str, details: dict[str, Any],
               prev_hash: str) -> str:
    body = json.dumps([seq, at, actor, action, subject, details, prev_hash],
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


def hashed_content(at: str, actor: str, action: str, subject: str, details: dict[str, Any]) -> str:
    """What lies between the row number and the previous hash in the text :func:`chain_hash` hashes, which is
    ``[`` seq ``,`` content ``,"`` prev_hash ``"]`` (a hash is hex: JSON quotes it and escapes nothing). PostgreSQL
    appends a row in one statement by hashing that text itself, once it has locked the chain's head."""
    return json.dumps([at, actor, action, subject, details], sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)[1:-1]


@dataclass(frozen=True)
class ChainBreak:
    chain: str
    seq: int
    reason: str


def find_break(chain: str, records: Sequence[AuditRecord], head: ChainHead | None) -> ChainBreak | None:
    """The first row where ``chain`` does not hold, or None when it is intact: ``records`` are the chain's rows in
    order, ``head`` its stored head (rows deleted from the end show as a head beyond the last row)."""
    prev, expected_seq = genesis(chain), 1
    for rec in records:
        if rec.seq != expected_seq:
            return ChainBreak(chain, expected_seq, f"row {expected_seq} is missing (next row found is {rec.seq})")
        if rec.prev_hash != prev:
            return ChainBreak(chain, rec.seq, f"row {rec.seq} does not point to the hash of row {rec.seq - 1}")
        if chain_hash(rec.seq, rec.at, rec.actor, rec.action, rec.subject, rec.details, rec.prev_hash) != rec.hash:
            return ChainBreak(chain, rec.seq, f"row {rec.seq} was altered: its content no longer matches its hash")
        prev, expected_seq = rec.hash, rec.seq + 1
    last = expected_seq - 1
    if head is None:
        return ChainBreak(chain, 1, "the chain's head is missing") if records else None
    if head.seq > last:
        deleted = f"all {head.seq} rows were deleted" if not records else f"rows after {last} were deleted"
        return ChainBreak(chain, last + 1, f"{deleted} (the head says {head.seq})")
    if head.seq < last:
        return ChainBreak(chain, head.seq + 1, f"row {head.seq + 1} lies beyond the chain's head (row {head.seq})")
    if head.hash != prev:
        return ChainBreak(chain, last, f"the head's hash is not row {last}'s")
    return None
