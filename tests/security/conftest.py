"""The attacks on the API run against the server tests' app: the same fixtures, shared with this folder."""
from tests.server.conftest import app, client, conformance, faces, tenants  # noqa: F401 - fixtures
