"""Request parsing: JSON bodies through strict pydantic models, path ids, bounded raw reads.

The same models are the request body schemas of the OpenAPI document (server/openapi.py): one definition
validates a body and describes it.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, overload

from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, model_validator
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from core.clock import ALMATY
from core.errors import NotFound
from server.face.image import ImageRejected
from server.problems import Problem, validation_problem

MAX_ID = 2**31 - 1
YEARS = range(2000, 2101)  # dates outside these are typos, and near the ends of datetime they overflow
READ_CHUNK = 64 * 1024

# Rules the domain checks after parsing (with its own 422 codes), stated in the document for integrators and
# API testers; the models' validation stays as loose as these fields' types. IIN: core/iin.py also checks the
# check digit. Names: core/names.py refuses Unicode Cc, Cf, Cs, Zl, Zp; the pattern lists the characters met in
# practice: C0 and C1 controls, soft hyphen, zero-width and direction marks, separators, overrides.
IIN_PATTERN = "^[0-9]{12}$"
NAME_PATTERN = (r"^[^\u0000-\u001f\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064"
                r"\u2066-\u206f\ufeff\ufff9-\ufffb]*$")
NAME_RULE = ("plain text: control characters, line breaks, tabs, direction overrides and invisible characters are "
             "refused (422 `invalid_name`)")
STORABLE_TEXT_PATTERN = r"^[^\u0000]*$"  # what Body._storable_text lets through


class Body(BaseModel):
    """Unknown fields are refused and types are not coerced: a typo in an integration fails loudly."""
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="after")
    def _storable_text(self) -> Body:
        """NUL is valid JSON but PostgreSQL cannot store it in text: refuse it here as a 422."""
        for name, value in self:
            if isinstance(value, str) and "\x00" in value:
                raise ValueError(f"field '{name}' contains a NUL character")
        return self




class BodySchema(GenerateJsonSchema):
    """A Body's JSON Schema for the OpenAPI document: every string field says it holds no NUL (Body refuses
    one) unless it states a stricter pattern; no titles made up from field names."""

    def str_schema(self, schema: core_schema.StringSchema) -> JsonSchemaValue:
        return {"pattern": STORABLE_TEXT_PATTERN, **super().str_schema(schema)}

    def field_title_should_be_set(self, schema: object) -> bool:
        return False


def _integral(value: object) -> object:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# JSON Schema counts 5.0 as an integer; strict mode would refuse it, so integral floats become ints first.
JsonInt = Annotated[int, BeforeValidator(_integral)]


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _refuse_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


async def read_json[M: Body](request: web.Request, model: type[M]) -> M:
    """A JSON body through ``model``. Duplicate keys are refused: parsers disagree on which one wins (here the
    last), so a proxy or audit tool in front could read a different request than the one we act on."""
    if request.content_type != "application/json":
        raise Problem(415, "unsupported_media_type", "send the body as JSON with 'Content-Type: application/json'")
    raw = await request.read()
    if not raw.strip():
        raise Problem(422, "body_missing", "the request body is empty; send a JSON object")
    try:
        json.loads(raw, object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as exc:
        raise Problem(422, "invalid_json", f"the key '{exc.key[:64]}' appears more than once in one JSON object; "
                      "send each key once") from None
    except (ValueError, RecursionError):
        pass  # not JSON at all: pydantic's parser below says why
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise validation_problem(exc) from None


def id_segment(name: str) -> str:
    """A route segment for a record id: ASCII digits only (``\\d`` would also take ``١``, Arabic-Indic one)."""
    return "{" + name + ":[0-9]{1,12}}"


def path_id(request: web.Request, name: str, what: str) -> int:
    value = int(request.match_info[name])  # the route pattern (id_segment) admits ASCII digits only
    if not 1 <= value <= MAX_ID:
        raise NotFound(f"{what} {value} not found")
    return value


@overload
def query_int(request: web.Request, name: str, *, default: int, low: int = 0, high: int = MAX_ID) -> int: ...


@overload
def query_int(request: web.Request, name: str, *, default: None = None, low: int = 0,
              high: int = MAX_ID) -> int | None: ...


def query_int(request: web.Request, name: str, *, default: int | None = None, low: int = 0,
              high: int = MAX_ID) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise Problem(422, "invalid_query", f"query parameter '{name}' must be a whole number from {low} to {high}",
                      field=name)
    return int(raw)


def query_date(request: web.Request, name: str, now: dt.datetime) -> dt.date:
    """A calendar day in Asia/Almaty; defaults to the local today."""
    raw = request.query.get(name)
    if raw is None:
        return now.astimezone(ALMATY).date()
    try:
        day = dt.date.fromisoformat(raw) if len(raw) == 10 else None
    except ValueError:
        day = None
    if day is None or day.year not in YEARS:
        raise Problem(422, "invalid_query", f"query parameter '{name}' must be a date like 2026-11-25 "
                      f"(years {YEARS.start}-{YEARS.stop - 1})", field=name)
    return day


async def read_bounded(read: Callable[[int], Awaitable[bytes]], limit: int, what: str = "the image") -> bytes:
    """Read a stream into memory, refusing as soon as it passes ``limit`` bytes (never to disk)."""
    chunks, size = [], 0
    while chunk := await read(READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise ImageRejected("too_large", f"{what} is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
