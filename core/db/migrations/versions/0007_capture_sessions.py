"""capture sessions and the face_live evidence method

- capture_sessions: a visit's one-time webcam page on Rastau (token stored as a SHA-256), its random head-turn
  challenge, when it was opened and finished, and its outcome (match, no_match, no_face, multiple_faces, not_live
  with a reason).
- visits.verified_by and visit_events.method widened from 8 to 12 characters for "face_live".

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('capture_sessions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('visit_id', sa.Integer(), nullable=False),
    sa.Column('clinic_id', sa.Integer(), nullable=False),
    sa.Column('challenge', sa.String(length=200), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('outcome', sa.String(length=24), nullable=True),
    sa.Column('reason', sa.String(length=24), nullable=True),
    sa.ForeignKeyConstraint(['visit_id'], ['visits.id'], name=op.f('fk_capture_sessions_visit_id_visits'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['clinic_id'], ['clinics.id'], name=op.f('fk_capture_sessions_clinic_id_clinics'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_capture_sessions')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_capture_sessions_token_hash'))
    )
    op.create_index(op.f('ix_capture_sessions_visit_id'), 'capture_sessions', ['visit_id'])
    _widen(8, 12)


def downgrade() -> None:
    _widen(12, 8)
    op.drop_index(op.f('ix_capture_sessions_visit_id'), table_name='capture_sessions')
    op.drop_table('capture_sessions')


def _widen(old: int, new: int) -> None:
    """PostgreSQL changes the declared length in place. SQLite enforces no lengths, so only the declaration in its
    schema text changes, as SQLite documents for changes that leave the stored rows alone (lang_altertable.html,
    "other kinds of table schema changes"): Alembic's batch mode would rebuild visits instead, and dropping the old
    table with foreign keys on deletes (ON DELETE CASCADE) every event, code and outbox row of every visit."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        op.alter_column('visits', 'verified_by', existing_type=sa.String(length=old), type_=sa.String(length=new))
        op.alter_column('visit_events', 'method', existing_type=sa.String(length=old), type_=sa.String(length=new))
        return
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
    bind.exec_driver_sql("PRAGMA writable_schema=ON")
    for table, column in (("visits", "verified_by"), ("visit_events", "method")):
        bind.exec_driver_sql("UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE type = 'table' AND name = ?",
                             (f"{column} VARCHAR({old})", f"{column} VARCHAR({new})", table))
    bind.exec_driver_sql(f"PRAGMA schema_version={int(version) + 1}")
    bind.exec_driver_sql("PRAGMA writable_schema=OFF")
