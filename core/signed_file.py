"""A file that carries its own signature in its last line, so it verifies with the public key alone.

Every line before the last is the content (JSON lines, or CSV with a header); the last line is the signature record:
what the content is (format, the query, the cursor it started at and the one that follows, who asked, when), how
long it is (bytes and lines), its SHA-256, the signing key's id, and an Ed25519 signature over all of that.

- JSON lines: the last line is ``{"rastau_signature": {...}}``.
- CSV (a spreadsheet opens it as it is): the last row is ``#rastau-signature,<base64url of the record's JSON>``,
  one more row whose first cell says what it is; the content before it starts with a UTF-8 byte-order mark.

A removed or added line changes the line count, a truncated file loses its signature line, an edited line changes
the SHA-256, an edited record or another key's signature fails the signature: :func:`verify` names which.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core import signing
from core.signing import Signer

PURPOSE = "rastau-export-v1"
JSONL, CSV = "jsonl", "csv"
CSV_MARK = "#rastau-signature"
_JSON_KEY = "rastau_signature"


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class SignedWriter:
    """Counts and hashes the content as it is written out, then makes the signature line."""

    def __init__(self, fmt: str):
        if fmt not in (JSONL, CSV):
            raise ValueError(f"unknown format {fmt}")
        self.fmt = fmt
        self._sha = hashlib.sha256()
        self.bytes = 0
        self.lines = 0

    def add(self, chunk: bytes) -> bytes:
        self._sha.update(chunk)
        self.bytes += len(chunk)
        self.lines += chunk.count(b"\n")
        return chunk

    def signature_line(self, signer: Signer, about: dict[str, Any]) -> bytes:
        record = {**about, "format": self.fmt, "bytes": self.bytes, "lines": self.lines,
                  "sha256": self._sha.hexdigest(), "alg": "Ed25519", "key_id": signer.key_id}
        record["signature"] = base64.b64encode(signer.sign(PURPOSE, _canonical(record))).decode()
        if self.fmt == JSONL:
            return json.dumps({_JSON_KEY: record}, sort_keys=True, ensure_ascii=False).encode() + b"\n"
        return f"{CSV_MARK},{base64.urlsafe_b64encode(_canonical(record)).decode()}\r\n".encode()


@dataclass(frozen=True)
class Verdict:
    valid: bool
    message: str
    record: dict[str, Any] | None = None  # the signature record (trusted only when valid)


def _tampered(message: str, record: dict[str, Any] | None = None) -> Verdict:
    return Verdict(False, message, record)


def _split(data: bytes) -> tuple[bytes, bytes]:
    """The content and the last line (without its line end)."""
    body = data[:-2] if data.endswith(b"\r\n") else data[:-1] if data.endswith(b"\n") else data
    cut = body.rfind(b"\n") + 1
    return data[:cut], body[cut:]


def _record(last: bytes) -> tuple[str, dict[str, Any]] | None:
    """The signature record in the last line and the format its line has, or None when it holds none."""
    try:
        if last.startswith(b"{"):
            found = json.loads(last).get(_JSON_KEY)
            return (JSONL, found) if isinstance(found, dict) else None
        if last.startswith(CSV_MARK.encode() + b","):
            found = json.loads(base64.urlsafe_b64decode(last[len(CSV_MARK) + 1:]))
            return (CSV, found) if isinstance(found, dict) else None
    except (ValueError, binascii.Error):
        return None
    return None


def verify(data: bytes, public: Ed25519PublicKey) -> Verdict:
    """Whether ``data`` is a complete, unmodified file signed by ``public``'s key; the message says where it is not."""
    content, last = _split(data)
    found = _record(last)
    if found is None:
        return _tampered("no signature line at the end: the file was cut short, or is not a Rastau export")
    line_format, record = found
    signature = record.get("signature")
    unsigned = {k: v for k, v in record.items() if k != "signature"}
    try:
        signed = signing.verify(public, PURPOSE, _canonical(unsigned), base64.b64decode(str(signature),
                                                                                         validate=True))
    except (ValueError, binascii.Error):
        signed = False
    if not signed:
        given = signing.key_id(public)
        if record.get("key_id") != given:
            return _tampered(f"signed by another key (key id {record.get('key_id')}); the public key given has key "
                             f"id {given}", record)
        return _tampered("the signature line was altered: its signature does not verify", record)
    if record.get("format") != line_format:
        return _tampered(f"the signature is for a {record.get('format')} file, the file ends like {line_format}",
                         record)
    lines = content.count(b"\n")
    if lines != record.get("lines"):
        return _tampered(f"the signature covers {record.get('lines')} lines before it, the file has {lines}: "
                         f"{'lines were removed' if lines < record['lines'] else 'lines were added'}", record)
    if len(content) != record.get("bytes"):
        return _tampered(f"the signature covers {record.get('bytes')} bytes before it, the file has "
                         f"{len(content)}: a line was edited", record)
    if hashlib.sha256(content).hexdigest() != record.get("sha256"):
        return _tampered("the content was edited: its SHA-256 is not the signed one (line and byte counts match)",
                         record)
    return Verdict(True, f"valid: {lines} lines, {len(content)} bytes, signed by key {record['key_id']} at "
                         f"{record.get('signed_at')}", record)
