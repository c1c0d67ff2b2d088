"""one audit chain per clinic

The audit log had one chain for the whole system, so every write of every clinic waited on its one head row. From
here each clinic has a chain of its own (``clinic:<id>``), and records about no single clinic go to ``operator``
(core/audit.py). The rows written before stay exactly as they were, as one closed chain named ``global``: rewriting
them into per-clinic chains would mean recomputing every hash, which is the very thing the chain exists to expose,
so the old chain keeps the hashes it was verified (and perhaps checkpointed) with. A database with no audit row yet
gets no global chain.

audit_log gains the chain column in its primary key (SQLite rebuilds the table; nothing refers to it);
audit_head is keyed by chain instead of the fixed id 1.

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

GLOBAL_CHAIN = "global"  # core.audit.GLOBAL_CHAIN, written out: a migration does not change with the code


def upgrade() -> None:
    with op.batch_alter_table('audit_log', recreate='always') as batch_op:
        batch_op.add_column(sa.Column('chain', sa.String(length=40), nullable=False, server_default=GLOBAL_CHAIN))
        batch_op.drop_constraint('pk_audit_log', type_='primary')
        batch_op.create_primary_key('pk_audit_log', ['chain', 'seq'])
    with op.batch_alter_table('audit_log') as batch_op:
        batch_op.alter_column('chain', server_default=None, existing_type=sa.String(length=40),
                              existing_nullable=False)

    conn = op.get_bind()
    old_head = conn.execute(sa.text("SELECT seq, last_hash FROM audit_head WHERE id = 1")).first()
    op.drop_table('audit_head')
    audit_head = op.create_table(
        'audit_head',
        sa.Column('chain', sa.String(length=40), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('last_hash', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('chain', name=op.f('pk_audit_head')))
    if old_head is not None and old_head.seq > 0:
        op.bulk_insert(audit_head, [{'chain': GLOBAL_CHAIN, 'seq': old_head.seq, 'last_hash': old_head.last_hash}])


def downgrade() -> None:
    """Possible only while no per-clinic row exists: several chains cannot become one without new hashes."""
    conn = op.get_bind()
    others = conn.execute(sa.text("SELECT count(*) FROM audit_log WHERE chain <> :g"), {"g": GLOBAL_CHAIN}).scalar()
    if others:
        raise RuntimeError(f"{others} audit rows are in per-clinic or operator chains; one global chain cannot hold "
                           "them without recomputing their hashes, so this downgrade is refused")
    old_head = conn.execute(sa.text("SELECT seq, last_hash FROM audit_head WHERE chain = :g"),
                            {"g": GLOBAL_CHAIN}).first()
    op.drop_table('audit_head')
    audit_head = op.create_table(
        'audit_head',
        sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('last_hash', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_head')))
    op.bulk_insert(audit_head, [{'id': 1, 'seq': old_head.seq if old_head else 0,
                                 'last_hash': old_head.last_hash if old_head else '0' * 64}])
    with op.batch_alter_table('audit_log', recreate='always') as batch_op:
        batch_op.drop_constraint('pk_audit_log', type_='primary')
        batch_op.create_primary_key('pk_audit_log', ['seq'])
        batch_op.drop_column('chain')
