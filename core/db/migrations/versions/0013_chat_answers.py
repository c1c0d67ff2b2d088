"""chat_answers: reserved for issue 17: dispute wait, answer confirmation and take-back, sent-message bookkeeping

Revision ID: 0013
Revises: 0012
"""
import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # chat-voice: the chat a message actually went to, beside its chat_message_id, so that a code message can be
    # edited later ("cancelled", "replaced") in that chat even after the patient's phone or chat changed
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("chat_id", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    # chat-voice
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("chat_id")
