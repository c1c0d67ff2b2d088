"""channels (issue 14): patient channels, outbox channel and delivery statuses, WhatsApp window, SMS budget

- patient_channels: one row per patient and channel ("telegram" | "whatsapp" | "sms") naming the address on it (chat
  id, wa_id, E.164 phone), when it was proven, and when and why it failed for good (gone_at, gone_reason: blocked the
  bot, no WhatsApp account, invalid number). A gone row counts only while its address is the patient's: a new phone
  is a new SMS channel. last_inbound_at: the patient's last message on it (WhatsApp's 24-hour window).
  Telegram's own state stays in patients.chat_id/chat_blocked as before; SMS is proven by the registered phone, so a
  patient without a row still has SMS (when SMS is configured).
- patients.preferred_channel: tried first; NULL: the fixed fallback order (bot/channels/base.py FALLBACK_ORDER).
- outbox.channel: the channel that carried (or last tried) the row; channel_message_id: the provider's id (WhatsApp
  wamid, SMS gateway id; Telegram's stays in chat_message_id) for delivery reports; delivery_status/_at: sent,
  delivered, read, failed as the provider reported; channel_note: why channels were skipped on the way.
- sms_daily_usage: SMS sent per clinic per Asia/Almaty day (the daily cap) and when the operator was warned.
- inbound_messages: provider message ids of inbound webhooks already seen (a replayed body changes nothing); payload
  and handled_at let a webhook answer at once and a worker handle the message durably.

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('patient_channels',
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('address', sa.String(length=64), nullable=False),
    sa.Column('proven_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('gone_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('gone_reason', sa.String(length=200), nullable=True),
    sa.Column('last_inbound_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_patient_channels_patient_id_patients'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('patient_id', 'channel', name=op.f('pk_patient_channels'))
    )
    op.create_index('ix_patient_channels_channel_address', 'patient_channels', ['channel', 'address'])
    with op.batch_alter_table('patients') as batch:
        batch.add_column(sa.Column('preferred_channel', sa.String(length=16), nullable=True))
    with op.batch_alter_table('outbox') as batch:
        batch.add_column(sa.Column('channel', sa.String(length=16), nullable=True))
        batch.add_column(sa.Column('channel_message_id', sa.String(length=128), nullable=True))
        batch.add_column(sa.Column('delivery_status', sa.String(length=12), nullable=True))
        batch.add_column(sa.Column('delivery_status_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('channel_note', sa.String(length=300), nullable=True))
    op.create_index('ix_outbox_channel_message', 'outbox', ['channel', 'channel_message_id'])
    op.create_table('sms_daily_usage',
    sa.Column('clinic_id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('sent', sa.Integer(), server_default='0', nullable=False),
    sa.Column('warned_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['clinic_id'], ['clinics.id'], name=op.f('fk_sms_daily_usage_clinic_id_clinics'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('clinic_id', 'day', name=op.f('pk_sms_daily_usage'))
    )
    op.create_table('inbound_messages',
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('external_id', sa.String(length=128), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('payload', sa.Text(), nullable=True),
    sa.Column('handled_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('channel', 'external_id', name=op.f('pk_inbound_messages'))
    )
    op.create_index('ix_inbound_messages_pending', 'inbound_messages', ['handled_at'])


def downgrade() -> None:
    op.drop_index('ix_inbound_messages_pending', table_name='inbound_messages')
    op.drop_table('inbound_messages')
    op.drop_table('sms_daily_usage')
    op.drop_index('ix_outbox_channel_message', table_name='outbox')
    with op.batch_alter_table('outbox') as batch:
        batch.drop_column('channel_note')
        batch.drop_column('delivery_status_at')
        batch.drop_column('delivery_status')
        batch.drop_column('channel_message_id')
        batch.drop_column('channel')
    with op.batch_alter_table('patients') as batch:
        batch.drop_column('preferred_channel')
    op.drop_index('ix_patient_channels_channel_address', table_name='patient_channels')
    op.drop_table('patient_channels')
