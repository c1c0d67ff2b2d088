"""chat_answers: reserved for issue 17: dispute wait, answer confirmation and take-back, sent-message bookkeeping

Revision ID: 0013
Revises: 0012
"""
from alembic import op  # noqa: F401

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
