"""api_keys notify: PostgreSQL tells every listener which key changed (the server's key cache, core.db.key_cache)

Revision ID: 0015
Revises: 0014
"""
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

# The database notifies, not the code that changes a key: no path (the CLI, a cascade from a removed clinic or
# doctor, an operator's SQL) can forget it. A row's prefix on any change except a use being recorded (last_used_at
# alone: once a minute per key in use, and NOTIFY serialises committing transactions); '*' after a TRUNCATE. The
# comparison masks last_used_at out of the whole row, so a column added later notifies too.
_FUNCTION = """
CREATE FUNCTION rastau_api_key_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('rastau_api_keys', '*');
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND (to_jsonb(OLD) - 'last_used_at') = (to_jsonb(NEW) - 'last_used_at') THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('rastau_api_keys', OLD.key_prefix);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.key_prefix IS DISTINCT FROM OLD.key_prefix) THEN
        PERFORM pg_notify('rastau_api_keys', NEW.key_prefix);
    END IF;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":  # no notification channel; the server reads the key every time there
        return
    op.execute(_FUNCTION)
    op.execute("CREATE TRIGGER api_keys_changed AFTER INSERT OR UPDATE OR DELETE ON api_keys "
               "FOR EACH ROW EXECUTE FUNCTION rastau_api_key_changed()")
    op.execute("CREATE TRIGGER api_keys_truncated AFTER TRUNCATE ON api_keys "
               "FOR EACH STATEMENT EXECUTE FUNCTION rastau_api_key_changed()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    op.execute("DROP TRIGGER api_keys_truncated ON api_keys")
    op.execute("DROP TRIGGER api_keys_changed ON api_keys")
    op.execute("DROP FUNCTION rastau_api_key_changed()")
