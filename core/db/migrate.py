"""Schema migrations (Alembic) and the start-up check that the schema is at head."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).parent / "migrations"


class SchemaNotCurrent(SystemExit):
    """The database schema is behind (or ahead of) this version of Rastau."""


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the migrations shipped with Rastau have one head"
    return head


async def upgrade_to_head(engine: AsyncEngine, revision: str = "head") -> None:
    def _run(sync_conn: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(_run)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())


async def ensure_schema_current(engine: AsyncEngine) -> None:
    """Refuse to run on a schema that is not at head, and say exactly how to fix it."""
    current, head = await current_revision(engine), head_revision()
    if current != head:
        raise SchemaNotCurrent(
            f"database schema is at revision {current or 'none (empty database)'}, this Rastau needs {head}.\n"
            "Back up the database, then run:  rastau migrate   (or: python -m core.cli migrate)")
