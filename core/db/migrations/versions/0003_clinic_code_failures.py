"""clinic_code_failures: wrong codes per clinic per hour

The per-doctor cap lets a clinic with N doctors try N times as many guesses; this counter caps the clinic.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('clinic_code_failures',
    sa.Column('clinic_id', sa.Integer(), nullable=False),
    sa.Column('hour_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['clinic_id'], ['clinics.id'], name=op.f('fk_clinic_code_failures_clinic_id_clinics'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('clinic_id', 'hour_start', name=op.f('pk_clinic_code_failures'))
    )


def downgrade() -> None:
    op.drop_table('clinic_code_failures')
