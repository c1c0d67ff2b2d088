"""Ed25519 signatures over what Rastau hands to the payer (evidence exports now, audit-chain checkpoints next), so a
file verifies with the public key alone, away from the database that a clinic or an intruder may have rewritten.

The private key comes from ``RASTAU_SIGNING_KEY`` (base64 of the raw 32-byte Ed25519 seed); production refuses to
start without it, dev mode makes a throwaway one and says so. Every signature covers a purpose label first
(``rastau-export-v1`` …), so a signature made for one kind of document can never pass for another.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core.config import MissingSecrets, Mode, Settings
from core.logs import get_logger

SEED_BYTES = 32
log = get_logger("rastau.signing")


class BadKey(ValueError):
    """A key that is not base64 of 32 raw bytes (nor a PEM Ed25519 public key)."""


def raw_public(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    """A short name for a public key: the first 16 hex digits of the SHA-256 of its raw bytes."""
    return hashlib.sha256(raw_public(public)).hexdigest()[:16]


def _b64_32(text: str, what: str) -> bytes:
    compact = "".join(text.split())
    try:
        raw = base64.b64decode(compact.replace("-", "+").replace("_", "/") + "=" * (-len(compact) % 4),
                               validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != SEED_BYTES:
        raise BadKey(f"{what} must be base64 of exactly {SEED_BYTES} bytes")
    return raw


def load_public_key(text: str) -> Ed25519PublicKey:
    """A public key as ``GET /api/v1/audit/signing-key`` gives it (base64 of 32 raw bytes), or as a PEM file."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode())
        except ValueError:
            raise BadKey("the PEM text is not a public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise BadKey("the PEM key is not an Ed25519 key")
        return key
    return Ed25519PublicKey.from_public_bytes(_b64_32(text, "the public key"))


def verify(public: Ed25519PublicKey, purpose: str, message: bytes, signature: bytes) -> bool:
    try:
        public.verify(signature, _labelled(purpose, message))
    except InvalidSignature:
        return False
    return True


def _labelled(purpose: str, message: bytes) -> bytes:
    return purpose.encode() + b"\n" + message


@dataclass(frozen=True)
class Signer:
    private: Ed25519PrivateKey
    ephemeral: bool  # dev mode's throwaway key: signatures made now are worthless after a restart

    @classmethod
    def from_settings(cls, settings: Settings) -> Signer:
        """The key from RASTAU_SIGNING_KEY. Unset: production refuses (MissingSecrets), dev makes a throwaway key
        and warns (``Settings.require_secrets(signing=True)`` makes it once for every server process instead)."""
        if settings.signing_key is not None:
            seed = _b64_32(settings.signing_key.get_secret_value(), "RASTAU_SIGNING_KEY")
            return cls(Ed25519PrivateKey.from_private_bytes(seed), ephemeral=False)
        if settings.mode is not Mode.DEV:
            raise MissingSecrets("Rastau refuses to sign evidence exports without RASTAU_SIGNING_KEY: "
                                 "generate one with python -c 'import base64, secrets; "
                                 "print(base64.b64encode(secrets.token_bytes(32)).decode())'")
        log.warning("DEV MODE: evidence exports are signed with a throwaway key; they will not verify against the "
                    "key of the next start")
        return cls(Ed25519PrivateKey.from_private_bytes(secrets.token_bytes(SEED_BYTES)), ephemeral=True)

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def public_b64(self) -> str:
        return base64.b64encode(raw_public(self.public)).decode()

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def sign(self, purpose: str, message: bytes) -> bytes:
        return self.private.sign(_labelled(purpose, message))


def new_seed_b64() -> str:
    """A fresh RASTAU_SIGNING_KEY value."""
    return base64.b64encode(secrets.token_bytes(SEED_BYTES)).decode()
