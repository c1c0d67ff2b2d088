"""Rows written with raw SQL into a database that an older migration left, for the tests of a later migration (the
tables' definitions describe the newest schema, so they cannot write these)."""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

# one clinic (1), its doctor (1) and a patient (1): what a visit needs
CLINIC_DOCTOR_PATIENT = (
    "INSERT INTO clinics (id, name, created_at) VALUES (1, 'Polyclinic', :t)",
    "INSERT INTO doctors (id, clinic_id, full_name, phone, created_at) VALUES (1, 1, 'Doctor', '+77011234567', :t)",
    "INSERT INTO patients (id, clinic_id, iin, full_name, phone, language, chat_blocked, created_at, updated_at) "
    "VALUES (1, 1, '900101300017', 'P', '+77051234567', 'ru', false, :t, :t)",
)


async def insert(conn: AsyncConnection, statements: tuple[str, ...] | list[str], now: dt.datetime) -> None:
    """Run each statement with ``:t`` bound to ``now`` as the tables' DateTime binds it (not as the driver would)."""
    stamp = sa.bindparam("t", type_=sa.DateTime())
    for statement in statements:
        await conn.execute(sa.text(statement).bindparams(stamp), {"t": now})
