"""web_dashboard: reserved for issue 13: web sign-in links, sessions, dispute reviews

Revision ID: 0012
Revises: 0011
"""
from alembic import op  # noqa: F401

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # dashboard-data: dispute reviews (an admin's or auditor's outcome and note on a patient's dispute; append-only)
    import sqlalchemy as sa
    op.create_table('dispute_reviews',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('clinic_id', sa.Integer(), nullable=False),
    sa.Column('visit_id', sa.Integer(), nullable=True),
    sa.Column('change_id', sa.Integer(), nullable=True),
    sa.Column('reviewer_kind', sa.String(length=8), nullable=False),
    sa.Column('reviewer_id', sa.Integer(), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('outcome', sa.String(length=20), nullable=False),
    sa.Column('note', sa.Text(), nullable=False, server_default=''),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('(visit_id IS NULL) <> (change_id IS NULL)', name=op.f('ck_dispute_reviews_one_dispute')),
    sa.ForeignKeyConstraint(['clinic_id'], ['clinics.id'], name=op.f('fk_dispute_reviews_clinic_id_clinics'),
                            ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['visit_id'], ['visits.id'], name=op.f('fk_dispute_reviews_visit_id_visits'),
                            ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['change_id'], ['patient_changes.id'],
                            name=op.f('fk_dispute_reviews_change_id_patient_changes'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dispute_reviews'))
    )
    op.create_index('ix_dispute_reviews_clinic_at', 'dispute_reviews', ['clinic_id', 'at'])
    op.create_index(op.f('ix_dispute_reviews_visit_id'), 'dispute_reviews', ['visit_id'])
    op.create_index(op.f('ix_dispute_reviews_change_id'), 'dispute_reviews', ['change_id'])
    # dashboard-data end


def downgrade() -> None:
    # dashboard-data: dispute reviews
    op.drop_index(op.f('ix_dispute_reviews_change_id'), table_name='dispute_reviews')
    op.drop_index(op.f('ix_dispute_reviews_visit_id'), table_name='dispute_reviews')
    op.drop_index('ix_dispute_reviews_clinic_at', table_name='dispute_reviews')
    op.drop_table('dispute_reviews')
    # dashboard-data end
