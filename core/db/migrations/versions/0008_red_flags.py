"""date-of-death list and service rules for the red flags

- deaths: the operator's date-of-death list (rastau import-deaths), keyed by IIN as patients' IINs are kept.
- service_rules: which sex and age band a service code may be billed for (rastau service-rules), seeded with the
  three cancer screenings of the Ministry of Health's order ҚР ДСМ-174/2020 (target groups for screening):
  cervical, women 30-70; breast, women 40-70; colorectal, everyone 50-70. The seed's service codes are Rastau's
  own placeholders (SCREEN-*); an operator maps them to the payer's classifier codes with rastau service-rules import.

Revision ID: 0008
Revises: 0007
"""
import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

_ORDER = "MoH order ҚР ДСМ-174/2020, target groups for screening"
SEED = [("SCREEN-CERVICAL", "female", 30, 70, f"cervical cancer screening: women 30-70 ({_ORDER})"),
        ("SCREEN-BREAST", "female", 40, 70, f"breast cancer screening (mammography): women 40-70 ({_ORDER})"),
        ("SCREEN-COLORECTAL", None, 50, 70, f"colorectal cancer screening: men and women 50-70 ({_ORDER})")]


def upgrade() -> None:
    op.create_table('deaths',
    sa.Column('iin', sa.String(length=12), nullable=False),
    sa.Column('died_on', sa.Date(), nullable=False),
    sa.Column('source', sa.String(length=200), nullable=False),
    sa.Column('imported_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('iin', name=op.f('pk_deaths'))
    )
    rules = op.create_table('service_rules',
    sa.Column('service_code', sa.String(length=64), nullable=False),
    sa.Column('sex', sa.String(length=6), nullable=True),
    sa.Column('min_age', sa.Integer(), nullable=True),
    sa.Column('max_age', sa.Integer(), nullable=True),
    sa.Column('source', sa.String(length=300), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('service_code', name=op.f('pk_service_rules'))
    )
    seeded_at = dt.datetime(2026, 11, 29, tzinfo=dt.UTC)
    if op.get_bind().dialect.name == "sqlite":  # stored as core.db.tables.UtcDateTime stores it there: naive UTC
        seeded_at = seeded_at.replace(tzinfo=None)
    op.bulk_insert(rules, [dict(service_code=code, sex=sex, min_age=low, max_age=high, source=source,
                                updated_at=seeded_at) for code, sex, low, high, source in SEED])


def downgrade() -> None:
    op.drop_table('service_rules')
    op.drop_table('deaths')
