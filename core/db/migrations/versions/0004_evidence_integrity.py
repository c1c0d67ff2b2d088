"""evidence integrity: late registrations, patient changes the patient hears about, exact face caps, key expiry

- visits.registered_late: the visit was registered after its verification window closed; it can collect no evidence.
- visits.verified_enrolment_id: which face enrolment a face match was made against.
- visits.code_requests: how many code requests a visit has taken (capped per visit).
- patient_changes: every face enrolment, replacement, revocation, phone and consent change, with who made it and
  whether the patient disputed it ("this wasn't me"); face_templates.enrolment_id points at its enrolment.
- face_failures_hourly: failed face checks per patient, doctor and clinic per hour (hourly caps).
- api_keys.expires_at, api_keys.last_used_at.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('patient_changes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('clinic_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=24), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('disputed_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_patient_changes_patient_id_patients'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['clinic_id'], ['clinics.id'], name=op.f('fk_patient_changes_clinic_id_clinics'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patient_changes'))
    )
    op.create_index('ix_patient_changes_patient_kind_at', 'patient_changes', ['patient_id', 'kind', 'at'])
    op.create_index('ix_patient_changes_clinic_at', 'patient_changes', ['clinic_id', 'at'])
    op.create_table('face_failures_hourly',
    sa.Column('scope', sa.String(length=8), nullable=False),
    sa.Column('subject_id', sa.Integer(), nullable=False),
    sa.Column('hour_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('scope', 'subject_id', 'hour_start', name=op.f('pk_face_failures_hourly'))
    )
    with op.batch_alter_table('face_templates') as batch:
        batch.add_column(sa.Column('enrolment_id', sa.Integer(), nullable=True))
        batch.create_foreign_key(op.f('fk_face_templates_enrolment_id_patient_changes'), 'patient_changes',
                                 ['enrolment_id'], ['id'], ondelete='SET NULL')
    with op.batch_alter_table('visits') as batch:
        batch.add_column(sa.Column('registered_late', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column('verified_enrolment_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('code_requests', sa.Integer(), server_default='0', nullable=False))
        batch.create_foreign_key(op.f('fk_visits_verified_enrolment_id_patient_changes'), 'patient_changes',
                                 ['verified_enrolment_id'], ['id'], ondelete='SET NULL')
    with op.batch_alter_table('api_keys') as batch:
        batch.add_column(sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('api_keys') as batch:
        batch.drop_column('last_used_at')
        batch.drop_column('expires_at')
    with op.batch_alter_table('visits') as batch:
        batch.drop_constraint(op.f('fk_visits_verified_enrolment_id_patient_changes'), type_='foreignkey')
        batch.drop_column('code_requests')
        batch.drop_column('verified_enrolment_id')
        batch.drop_column('registered_late')
    with op.batch_alter_table('face_templates') as batch:
        batch.drop_constraint(op.f('fk_face_templates_enrolment_id_patient_changes'), type_='foreignkey')
        batch.drop_column('enrolment_id')
    op.drop_table('face_failures_hourly')
    op.drop_index('ix_patient_changes_clinic_at', table_name='patient_changes')
    op.drop_index('ix_patient_changes_patient_kind_at', table_name='patient_changes')
    op.drop_table('patient_changes')
