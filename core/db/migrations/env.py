"""Alembic environment. Rastau runs migrations through core.db.migrate, which hands us a connection."""
from alembic import context

from core.db.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `rastau migrate` (core.db.migrate), not the bare alembic CLI")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                  compare_type=True)
with context.begin_transaction():
    context.run_migrations()
