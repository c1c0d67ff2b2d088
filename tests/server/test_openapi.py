"""The OpenAPI document and the route table describe the same API, with the same scopes."""
from __future__ import annotations

from aiohttp import web

from core.config import Mode, Settings
from server.app import create_app
from server.auth import access_of
from server.bodies import Body, BodySchema
from server.openapi import DOCUMENT
from server.web.app import PREFIX as WEB_PREFIX
from tests.server.support import FakeAnalyser


def _app() -> web.Application:
    settings = Settings(_env_file=None, mode=Mode.DEV, database_url="sqlite+aiosqlite:///unused.db")
    return create_app(settings, ctx=object(), face_pool=FakeAnalyser())


def _routed(app: web.Application) -> dict[tuple[str, str], object]:
    """The API's routes. The web dashboard's pages (the /web sub-application: HTML for people, behind its own session
    and CSRF, never an API key) are not part of the API's contract; tests/web/test_dashboard.py walks their route table
    and proves every one of them but sign-in needs a session."""
    return {(route.method.lower(), route.resource.canonical): route.handler
            for route in app.router.routes()
            if route.method != "HEAD" and not route.resource.canonical.startswith(WEB_PREFIX + "/")}


def test_every_route_is_documented_and_every_documented_operation_is_routed():
    routed = set(_routed(_app()))
    documented = {(method, path) for path, ops in DOCUMENT["paths"].items() for method in ops}
    assert routed - documented == set(), "routes missing from the OpenAPI document"
    assert documented - routed == set(), "documented operations the app does not serve"


def test_documented_scopes_are_the_scopes_the_handlers_demand():
    for (method, path), handler in _routed(_app()).items():
        access = access_of(handler)
        assert access is not None, f"{method.upper()} {path} declares no access rule"
        documented = {scope for requirement in DOCUMENT["paths"][path][method]["security"]
                      for scope in requirement.get("bearerAuth", [])}
        expected = set() if access.scopes is None else {s.value for s in access.scopes}
        assert documented == expected, f"{method.upper()} {path}"


def test_protected_operations_document_401_and_403_and_every_body_is_json_or_declared():
    for path, ops in DOCUMENT["paths"].items():
        for method, op in ops.items():
            if op["security"]:
                assert {"401", "403", "503"} <= set(op["responses"]), f"{method} {path}"


async def test_document_is_served(client):
    response = await client.get("/api/v1/openapi.json")
    assert response.status == 200
    assert await response.json() == DOCUMENT


def _references(node) -> list[str]:
    if isinstance(node, list):
        return [ref for value in node for ref in _references(value)]
    if not isinstance(node, dict):
        return []
    found = [node["$ref"]] if "$ref" in node else []
    return found + [ref for value in node.values() for ref in _references(value)]


def test_every_reference_in_the_document_resolves():
    for ref in set(_references(DOCUMENT)):
        node = DOCUMENT
        for part in ref.removeprefix("#/").split("/"):
            assert part in node, f"{ref} points nowhere"
            node = node[part]


def test_json_request_bodies_are_the_schemas_of_the_models_that_validate_them():
    models = {model.__name__: model for model in Body.__subclasses__()}
    bodies = [op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
              for ops in DOCUMENT["paths"].values() for op in ops.values()
              if "application/json" in op.get("requestBody", {}).get("content", {})]
    assert bodies and set(bodies) <= set(models), "a JSON body documented without a model"
    for name in bodies:
        generated = models[name].model_json_schema(ref_template="#/components/schemas/{model}",
                                                   schema_generator=BodySchema)
        assert DOCUMENT["components"]["schemas"][name] == generated, name
