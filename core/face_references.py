"""Face reference encodings, encrypted at rest.

Each 128-d encoding is sealed with AES-GCM; the patient id is the associated data, so a row copied onto another
patient fails to decrypt instead of matching. Key version 1 (before revision 0010): sealed under the key from the
environment itself. Key version 2: sealed under the patient's own data key (core/db/keystore.py), which /withdraw
destroys (crypto-shredding); the bot's purge job re-seals version 1 rows as version 2.
"""
from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.errors import InvalidValue, TemplateDecryptError

ENCODING_SIZE = 128
MASTER_KEY = 1  # key_version of a reference sealed under RASTAU_TEMPLATE_KEY itself
PATIENT_KEY = 2  # key_version of a reference sealed under the patient's data key
MAX_REFERENCES = 5
_NONCE = 12


class TemplateCipher:
    def __init__(self, key: bytes):
        if len(key) != 32:
            raise ValueError("template key must be 32 bytes (AES-256)")
        self._aead = AESGCM(key)

    _version = MASTER_KEY

    def _aad(self, patient_id: int) -> bytes:
        return f"rastau-face-template:v{self._version}:patient:{patient_id}".encode()

    def seal(self, patient_id: int, encoding: list[float] | tuple[float, ...]) -> bytes:
        values = [float(v) for v in encoding]
        if len(values) != ENCODING_SIZE:
            raise InvalidValue(f"a face encoding has {ENCODING_SIZE} values, got {len(values)}")
        nonce = os.urandom(_NONCE)
        plain = struct.pack(f"<{ENCODING_SIZE}d", *values)
        return nonce + self._aead.encrypt(nonce, plain, self._aad(patient_id))

    def open(self, patient_id: int, sealed: bytes) -> tuple[float, ...]:
        try:
            plain = self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], self._aad(patient_id))
        except (InvalidTag, ValueError):
            raise TemplateDecryptError(
                f"face reference does not belong to patient {patient_id} or was altered") from None
        return struct.unpack(f"<{ENCODING_SIZE}d", plain)


class PatientCipher(TemplateCipher):
    """Seals and opens one patient's references under that patient's data key (key version 2)."""

    _version = PATIENT_KEY
