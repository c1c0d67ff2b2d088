"""Sealing and opening a patient's face references under the patient's own key (core/db/keystore.py).

References sealed before revision 0010 (key version 1, under RASTAU_TEMPLATE_KEY itself) still open with the
environment's key until the purge job re-seals them (:func:`reseal_legacy`). A reference whose patient key is gone
(destroyed by /withdraw or by retention) opens no more: it is skipped, as if there were none.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from core.db.repositories import Reference
from core.errors import TemplateDecryptError
from core.face_references import MASTER_KEY, PATIENT_KEY, PatientCipher
from core.services import Context


async def seal_for(ctx: Context, patient_id: int, encodings: list[tuple[float, ...]],
                   now: dt.datetime) -> list[bytes]:
    """The encodings sealed under the patient's key (made now when the patient has none yet)."""
    key = await ctx.keys.key(patient_id, create=True, now=now)
    assert key is not None, "a key is created when missing"
    cipher = PatientCipher(key)
    return [cipher.seal(patient_id, enc) for enc in encodings]


@dataclass(frozen=True)
class Opened:
    reference: Reference
    encoding: tuple[float, ...]


async def open_references(ctx: Context, patient_id: int, refs: list[Reference]) -> list[Opened]:
    """Every reference that still opens. A version 2 reference without a key (shredded) is left out; a reference
    that does not open under a key that exists raises TemplateDecryptError (moved between patients or altered)."""
    key = await ctx.keys.key(patient_id) if any(r.key_version == PATIENT_KEY for r in refs) else None
    opened = []
    for ref in refs:
        if not ref.sealed:
            continue
        if ref.key_version == MASTER_KEY:
            opened.append(Opened(ref, ctx.cipher.open(patient_id, ref.sealed)))
        elif key is not None:
            opened.append(Opened(ref, PatientCipher(key).open(patient_id, ref.sealed)))
    return opened


async def reseal_legacy(ctx: Context, limit: int = 500) -> int:
    """Re-seal up to ``limit`` version 1 references under their patients' own keys; how many were re-sealed.
    A row that does not open under the environment's key is left as it is (and fails its match, as before)."""
    async with ctx.uow(read_only=True) as uow:
        rows = await uow.templates.legacy(limit)
    done = 0
    now = ctx.clock.now()
    for template_id, patient_id, sealed in rows:
        try:
            encoding = ctx.cipher.open(patient_id, sealed)
        except TemplateDecryptError:
            continue
        [fresh] = await seal_for(ctx, patient_id, [encoding], now)
        async with ctx.uow() as uow:
            if await uow.templates.reseal(template_id, sealed, fresh, PATIENT_KEY):
                done += 1
            await uow.commit()
    return done
