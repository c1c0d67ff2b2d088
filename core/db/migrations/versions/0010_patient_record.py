"""patient_record: per-patient keys (crypto-shredding), purge bookkeeping (issue 16)

- face_templates.key_version: 1 for every reference stored before (sealed under RASTAU_TEMPLATE_KEY itself), 2 for
  a reference sealed under the patient's own key, which lives in the key store (core/db/keystore.py), not here.
  Existing references are NOT re-sealed here: a migration holds neither the key from the environment nor the key
  store. The bot's purge job (and `rastau reseal-references`) re-seals version 1 rows as version 2, lazily.
- purge_totals: rows removed or reduced by the retention purge, per kind (counts only), read by /metrics.

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('face_templates') as batch:
        batch.add_column(sa.Column('key_version', sa.Integer(), server_default='1', nullable=False))
    op.create_table('purge_totals',
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('rows', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('runs', sa.Integer(), server_default='0', nullable=False),
    sa.Column('last_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('kind', name=op.f('pk_purge_totals'))
    )


def downgrade() -> None:
    op.drop_table('purge_totals')
    # before 0010 every reference is opened with the environment's key: a version 2 reference would fail to open,
    # so it is revoked (the patient verifies with the one-time code until enrolled again)
    op.execute("UPDATE face_templates SET revoked_at = CURRENT_TIMESTAMP WHERE key_version = 2 AND revoked_at IS NULL")
    with op.batch_alter_table('face_templates') as batch:
        batch.drop_column('key_version')
