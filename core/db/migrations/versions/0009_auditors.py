"""auditors: the payer's people, their clinics and keys

- auditors: the operator's auditors (name, phone, language, chat like admins); of no clinic; removed_at keeps a
  removed auditor's row, so the audit log's "auditor:<id>" keeps naming someone.
- auditor_clinics: the clinics an auditor reads (none listed and all_clinics: every clinic, those added later too).
- api_keys.auditor_id: a key is a clinic's (clinic_id) or an auditor's (auditor_id), never both, never neither
  (CHECK one_owner); clinic_id is therefore nullable.

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('auditors',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('full_name', sa.String(length=200), nullable=False),
    sa.Column('phone', sa.String(length=16), nullable=False),
    sa.Column('language', sa.String(length=2), server_default='ru', nullable=False),
    sa.Column('chat_id', sa.BigInteger(), nullable=True),
    sa.Column('all_clinics', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('removed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_auditors'))
    )
    op.create_index(op.f('ix_auditors_phone'), 'auditors', ['phone'])
    op.create_index(op.f('ix_auditors_chat_id'), 'auditors', ['chat_id'])
    op.create_table('auditor_clinics',
    sa.Column('auditor_id', sa.Integer(), nullable=False),
    sa.Column('clinic_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['auditor_id'], ['auditors.id'], name=op.f('fk_auditor_clinics_auditor_id_auditors'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['clinic_id'], ['clinics.id'], name=op.f('fk_auditor_clinics_clinic_id_clinics'),
                            ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('auditor_id', 'clinic_id', name=op.f('pk_auditor_clinics'))
    )
    with op.batch_alter_table('api_keys') as batch:
        batch.alter_column('clinic_id', existing_type=sa.Integer(), nullable=True)
        batch.add_column(sa.Column('auditor_id', sa.Integer(), nullable=True))
        batch.create_foreign_key(op.f('fk_api_keys_auditor_id_auditors'), 'auditors', ['auditor_id'], ['id'],
                                 ondelete='RESTRICT')
        batch.create_index(op.f('ix_api_keys_auditor_id'), ['auditor_id'])
        batch.create_check_constraint('one_owner', '(clinic_id IS NULL) <> (auditor_id IS NULL)')


def downgrade() -> None:
    op.execute("DELETE FROM api_keys WHERE auditor_id IS NOT NULL")  # a key of no clinic has no place before 0009
    with op.batch_alter_table('api_keys') as batch:
        batch.drop_constraint(op.f('ck_api_keys_one_owner'), type_='check')
        batch.drop_index(op.f('ix_api_keys_auditor_id'))
        batch.drop_constraint(op.f('fk_api_keys_auditor_id_auditors'), type_='foreignkey')
        batch.drop_column('auditor_id')
        batch.alter_column('clinic_id', existing_type=sa.Integer(), nullable=False)
    op.drop_table('auditor_clinics')
    op.drop_index(op.f('ix_auditors_chat_id'), table_name='auditors')
    op.drop_index(op.f('ix_auditors_phone'), table_name='auditors')
    op.drop_table('auditors')
