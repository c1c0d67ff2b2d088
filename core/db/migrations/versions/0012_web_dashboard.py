"""web_dashboard: the web dashboard's sign-in links and sessions (issue 13), and dispute reviews

- web_links: one-time sign-in links the bot's /web answers; only the SHA-256 of the token, for one chat and one role
  row (admin or auditor), used once (used_at), valid until expires_at.
- web_sessions: the browser sessions those links open; the SHA-256 of the cookie, the language chosen, expires_at,
  ended_at at sign-out.
- dispute_reviews (dashboard-data's block below).

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # dashboard-web: sign-in links and sessions
    op.create_table('web_links',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('chat_id', sa.BigInteger(), nullable=False),
    sa.Column('role', sa.String(length=8), nullable=False),
    sa.Column('subject_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_web_links')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_web_links_token_hash'))
    )
    op.create_index(op.f('ix_web_links_chat_id'), 'web_links', ['chat_id'])
    op.create_table('web_sessions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('chat_id', sa.BigInteger(), nullable=False),
    sa.Column('role', sa.String(length=8), nullable=False),
    sa.Column('subject_id', sa.Integer(), nullable=False),
    sa.Column('language', sa.String(length=2), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_web_sessions')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_web_sessions_token_hash'))
    )
    op.create_index('ix_web_sessions_subject', 'web_sessions', ['role', 'subject_id'])
    # dashboard-web end
    # dashboard-data: dispute reviews (an admin's or auditor's outcome and note on a patient's dispute; append-only)
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
    # the disputes queue, oldest first, one clinic's page at a time (bench/dashboard.py)
    op.create_index('ix_visits_clinic_state_answered', 'visits', ['clinic_id', 'state', 'answered_at'])
    op.create_index('ix_patient_changes_clinic_disputed', 'patient_changes', ['clinic_id', 'disputed_at'])
    # dashboard-data end
    # scorecard-speed: a doctor's scorecard reads the red flags' rules for one doctor and the code-share rule for the
    # whole clinic-month (its median is the yardstick): this index holds everything those read (the id too: the rowid
    # on SQLite, INCLUDE on PostgreSQL), so the clinic-month is read from the index alone, and the doctor's rules find
    # clinic, period and doctor in one index instead of ANDing the doctor's index with ix_visits_clinic_state_answered
    # (the clinic's every visit) as PostgreSQL otherwise planned (bench/dashboard.py, bench/RESULTS.md)
    op.create_index('ix_visits_clinic_start_evidence', 'visits',
                    ['clinic_id', 'start_at', 'doctor_id', 'mode', 'state', 'verified_by'], postgresql_include=['id'])
    # scorecard-speed end


def downgrade() -> None:
    # scorecard-speed
    op.drop_index('ix_visits_clinic_start_evidence', table_name='visits')
    # scorecard-speed end
    # dashboard-data: dispute reviews
    op.drop_index('ix_patient_changes_clinic_disputed', table_name='patient_changes')
    op.drop_index('ix_visits_clinic_state_answered', table_name='visits')
    op.drop_index(op.f('ix_dispute_reviews_change_id'), table_name='dispute_reviews')
    op.drop_index(op.f('ix_dispute_reviews_visit_id'), table_name='dispute_reviews')
    op.drop_index('ix_dispute_reviews_clinic_at', table_name='dispute_reviews')
    op.drop_table('dispute_reviews')
    # dashboard-data end
    # dashboard-web: sign-in links and sessions
    op.drop_index('ix_web_sessions_subject', table_name='web_sessions')
    op.drop_table('web_sessions')
    op.drop_index(op.f('ix_web_links_chat_id'), table_name='web_links')
    op.drop_table('web_links')
    # dashboard-web end
