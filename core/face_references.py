"""Face reference encodings, encrypted at rest.

Each 128-d encoding is sealed with AES-GCM under a key from the environment; the patient id is the
associated data, so a row copied onto another patient fails to decrypt instead of matching.
"""
from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.errors import InvalidValue, TemplateDecryptError

ENCODING_SIZE = 128
MAX_REFERENCES = 5
_NONCE = 12


class TemplateCipher:
    def __init__(self, key: bytes):
        if len(key) != 32:
            raise ValueError("template key must be 32 bytes (AES-256)")
        self._aead = AESGCM(key)

    @staticmethod
    def _aad(patient_id: int) -> bytes:
        return f"rastau-face-template:v1:patient:{patient_id}".encode()

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
