"""visits.code_generation: the generation of the visit's code, beside the row a code check locks

A PostgreSQL code check counts its attempt and reads the code in one statement (VisitRepo.count_code_attempt);
its reads of visit_codes see the database as it stood before the statement waited for the visit's lock, the
visit row it updates as that lock left it. The code's generation on the visit row tells a code issued meanwhile
from the one read. Filled from visit_codes; SQLite adds the column in place, rebuilding no table.

Revision ID: 0014
Revises: 0013
"""
import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('visits', sa.Column('code_generation', sa.Integer(), nullable=True))
    op.execute("UPDATE visits SET code_generation = "  # only the visits that have a code: the rest stay as they are
               "(SELECT generation FROM visit_codes WHERE visit_codes.visit_id = visits.id) "
               "WHERE id IN (SELECT visit_id FROM visit_codes)")


def downgrade() -> None:
    op.drop_column('visits', 'code_generation')
