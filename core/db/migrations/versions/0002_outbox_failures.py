"""outbox: count delivery failures apart from claims

Claims also come from crashed dispatchers and hand-backs; only real failures (Telegram 5xx, timeouts, render
errors) may spend the retry budget, or a dozen crashes would make one 500 lose the message.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('outbox') as batch:
        batch.add_column(sa.Column('failures', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('outbox') as batch:
        batch.drop_column('failures')
