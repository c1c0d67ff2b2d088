"""Signed audit-chain checkpoints: the head (row number and hash) of every chain at one moment, signed with the
operator's Ed25519 key (core/signing.py, purpose ``rastau-audit-checkpoint-v1``) and pushed out of the database (the
auditors' chats, the payer's webhook, ``rastau audit-checkpoint``).

The chain alone cannot stop whoever writes the database: they can rewrite every row and recompute every hash, and
the chain holds again. A checkpoint kept elsewhere can: row N's hash is fixed by rows 1..N, so once a checkpoint
has signed it, any change to those rows, however well re-hashed, no longer reaches it. With one checkpoint a
re-hashed change is placed at or before the checkpoint's row; with several, between the last one that still holds
and the first that does not. A change not re-hashed is named exactly (:func:`core.audit.find_break`).
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core.audit import AuditRecord, ChainBreak, ChainHead, find_break
from core.signing import Signer, key_id, verify

PURPOSE = "rastau-audit-checkpoint-v1"


class BadCheckpoint(ValueError):
    """A checkpoint file that is not one, or whose signature does not hold for the key given."""


@dataclass(frozen=True)
class Checkpoint:
    at: dt.datetime
    key_id: str
    heads: tuple[ChainHead, ...]  # by chain name

    def body(self) -> dict[str, Any]:
        return {"format": PURPOSE, "at": self.at.astimezone(dt.UTC).isoformat(), "key_id": self.key_id,
                "heads": [{"chain": h.chain, "seq": h.seq, "hash": h.hash} for h in self.heads]}

    @property
    def event_id(self) -> str:
        """The same heads signed twice are one event: what the outbox and the payer dedupe on."""
        heads = json.dumps(self.body()["heads"], sort_keys=True, separators=(",", ":"))
        return "checkpoint:" + hashlib.sha256(heads.encode()).hexdigest()[:24]


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def make_checkpoint(signer: Signer, heads: Sequence[ChainHead], at: dt.datetime) -> tuple[Checkpoint, str]:
    """The checkpoint and its file: one JSON object, the signed body and the signature (base64)."""
    checkpoint = Checkpoint(at, signer.key_id, tuple(sorted(heads, key=lambda h: h.chain)))
    body = checkpoint.body()
    signature = base64.b64encode(signer.sign(PURPOSE, _canonical(body))).decode()
    return checkpoint, json.dumps({"checkpoint": body, "signature": signature}, sort_keys=True, indent=1) + "\n"


def _parse(text: str) -> tuple[Checkpoint, dict[str, Any], bytes]:
    try:
        document = json.loads(text)
        body, signature = document["checkpoint"], base64.b64decode(document["signature"], validate=True)
        if body["format"] != PURPOSE:
            raise BadCheckpoint(f"not an audit checkpoint (format {body['format']!r})")
        checkpoint = Checkpoint(dt.datetime.fromisoformat(body["at"]), str(body["key_id"]),
                                tuple(ChainHead(str(h["chain"]), int(h["seq"]), str(h["hash"])) for h in body["heads"]))
    except BadCheckpoint:
        raise
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise BadCheckpoint(f"not a checkpoint file ({type(exc).__name__}: {exc})") from None
    return checkpoint, body, signature


def parse_checkpoint(text: str) -> Checkpoint:
    """A checkpoint file read without checking its signature: for showing one Rastau made itself, never for proof."""
    return _parse(text)[0]


def read_checkpoint(text: str, public: Ed25519PublicKey) -> Checkpoint:
    """The checkpoint in ``text`` if its signature holds for ``public``; BadCheckpoint otherwise."""
    checkpoint, body, signature = _parse(text)
    if checkpoint.key_id != key_id(public) or not verify(public, PURPOSE, _canonical(body), signature):
        raise BadCheckpoint("the signature does not hold for this public key: the file was changed, or signed with "
                            "another key")
    return checkpoint


@dataclass(frozen=True)
class Finding:
    """What one checkpoint says of one chain now: intact (``broken`` None), or its first break; ``rehashed`` when
    the rows still chain to each other but no longer to the checkpoint (changed, then every hash recomputed)."""
    checkpoint_seq: int
    broken: ChainBreak | None
    rehashed: bool = False


def check_chain(head: ChainHead, records: Sequence[AuditRecord]) -> Finding:
    """Whether rows 1..``head.seq`` of the chain (``records``: its rows in order, as stored now) are still the rows
    the checkpoint signed; if not, the first row that changed or was removed, as closely as it can be told."""
    covered = [r for r in records if r.seq <= head.seq]
    broken = find_break(head.chain, covered, head)
    if broken is None:
        return Finding(head.seq, None)
    last = covered[-1] if covered else None
    if last is not None and last.seq == head.seq and find_break(
            head.chain, covered, ChainHead(head.chain, last.seq, last.hash)) is None:
        return Finding(head.seq, ChainBreak(head.chain, head.seq, f"the rows up to {head.seq} no longer hash to what "
                                            "the checkpoint signed: a row at or before it was changed and every "
                                            "hash after it recomputed"), rehashed=True)
    return Finding(head.seq, broken)


def first_break(findings: Sequence[Finding]) -> ChainBreak | None:
    """Several checkpoints of one chain: the first break, a re-hashed one placed after the last checkpoint row that
    still holds."""
    holds_to = 0
    for finding in sorted(findings, key=lambda f: f.checkpoint_seq):
        if finding.broken is None:
            holds_to = finding.checkpoint_seq
            continue
        if finding.rehashed and holds_to:
            b = finding.broken
            return ChainBreak(b.chain, b.seq, f"a row after {holds_to} and at or before {b.seq} was changed and "
                                              f"every hash after it recomputed (the checkpoint of row {holds_to} "
                                              "still holds)")
        return finding.broken
    return None
