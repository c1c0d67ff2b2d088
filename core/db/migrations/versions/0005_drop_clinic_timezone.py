"""clinics.timezone dropped: nothing read it

Kazakhstan keeps one time zone (Asia/Almaty, UTC+5 since 2024-03-01); core.clock holds it for every clinic, so the
per-clinic column (always its default) was dead data. SQLite drops the column in place (ALTER TABLE ... DROP
COLUMN, SQLite 3.35 and later), so no table that refers to clinics is rebuilt and no row is touched.

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_column('clinics', 'timezone')


def downgrade() -> None:
    op.add_column('clinics', sa.Column('timezone', sa.String(length=64), server_default='Asia/Almaty', nullable=False))
