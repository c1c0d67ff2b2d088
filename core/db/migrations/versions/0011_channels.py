"""channels: reserved for issue 14: patient channels, outbox channel and delivery statuses, WhatsApp window, SMS budget

Revision ID: 0011
Revises: 0010
"""
from alembic import op  # noqa: F401

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
