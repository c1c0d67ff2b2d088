"""Face references at rest: encrypted, bound to their patient, consent-gated, revocable."""
import random
import struct

import pytest
import sqlalchemy as sa

from core.db import tables as t
from core.errors import ConsentMissing, TemplateDecryptError
from core.services import registry


def _encoding(seed):
    rng = random.Random(seed)
    return tuple(rng.uniform(-0.3, 0.3) for _ in range(128))


async def test_enrolment_requires_consent(ctx, clinic_world):
    with pytest.raises(ConsentMissing, match="consent"):
        await registry.enrol_face(ctx, clinic_world.clinic.id, clinic_world.p1.id, [_encoding(1)])


async def test_stored_bytes_are_not_the_encoding_and_round_trip(ctx, clinic_world, engine):
    w = clinic_world
    await registry.record_consent(ctx, w.clinic.id, w.p1.id, "nurse Dana")
    enc = _encoding(1)
    assert await registry.enrol_face(ctx, w.clinic.id, w.p1.id, [enc]) == 1
    async with engine.connect() as conn:
        blob = bytes((await conn.execute(sa.select(t.face_templates.c.sealed))).scalar_one())
    assert struct.pack("<128d", *enc) not in blob and struct.pack("<128f", *enc) not in blob
    assert await registry.face_references(ctx, w.p1.id) == [enc]


async def test_swapping_two_patients_rows_makes_both_fail(ctx, clinic_world, engine):
    w = clinic_world
    for p, seed in ((w.p1, 1), (w.p2, 2)):
        await registry.record_consent(ctx, w.clinic.id, p.id, "nurse Dana")
        await registry.enrol_face(ctx, w.clinic.id, p.id, [_encoding(seed)])
    # an insider copies each patient's sealed reference onto the other patient's row
    async with engine.begin() as conn:
        ft = t.face_templates
        rows = {r.patient_id: (r.id, r.sealed) for r in
                (await conn.execute(sa.select(ft.c.id, ft.c.patient_id, ft.c.sealed))).all()}
        (id1, blob1), (id2, blob2) = rows[w.p1.id], rows[w.p2.id]
        await conn.execute(sa.update(ft).where(ft.c.id == id1).values(sealed=blob2))
        await conn.execute(sa.update(ft).where(ft.c.id == id2).values(sealed=blob1))
    for p in (w.p1, w.p2):
        with pytest.raises(TemplateDecryptError):
            await registry.face_references(ctx, p.id)


async def test_reenrolment_revokes_old_references(ctx, clinic_world):
    w = clinic_world
    await registry.record_consent(ctx, w.clinic.id, w.p1.id, "nurse Dana")
    await registry.enrol_face(ctx, w.clinic.id, w.p1.id, [_encoding(1), _encoding(2)])
    await registry.enrol_face(ctx, w.clinic.id, w.p1.id, [_encoding(3)])
    assert await registry.face_references(ctx, w.p1.id) == [_encoding(3)]
    assert await registry.revoke_face(ctx, w.clinic.id, w.p1.id) == 1
    assert await registry.face_references(ctx, w.p1.id) == []


async def test_enrolment_takes_one_to_five_references(ctx, clinic_world):
    w = clinic_world
    await registry.record_consent(ctx, w.clinic.id, w.p1.id, "nurse Dana")
    with pytest.raises(Exception, match="between 1 and 5"):
        await registry.enrol_face(ctx, w.clinic.id, w.p1.id, [_encoding(i) for i in range(6)])
    with pytest.raises(Exception, match="between 1 and 5"):
        await registry.enrol_face(ctx, w.clinic.id, w.p1.id, [])
