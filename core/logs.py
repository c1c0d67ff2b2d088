"""Structured logging that cannot leak what it must not.

Every record goes through one formatter: ours (structlog) and every library's (aiohttp, asyncio, SQLAlchemy,
aiosqlite, aiogram, …) through the root handler. Its message, arguments and traceback are first rendered to text
(plain, without local variables), then :func:`redact` rewrites every string: bytes reprs, binary text, long
base64/hex runs, API keys, bearer credentials, bot tokens and the row values PostgreSQL quotes in its errors are
withheld, whole IINs are masked to their last 4 digits, phones and 6-digit codes are replaced, and what remains
is cut to a bounded length. Fields that could carry a code, a secret, a token, a face encoding or image bytes
are dropped by name. Request-parsing errors keep their class only; database loggers never go below WARNING.
"""
from __future__ import annotations

import logging
import re
import sys
from typing import IO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from core.iin import mask_iin

_IIN_PATTERN = re.compile(r"(?<!\d)\d{12}(?!\d)")
_FORBIDDEN_KEYS = re.compile(r"(code|secret|token|password|key|encoding|frame|image|photo|template)", re.IGNORECASE)
_ALLOWED_KEYS = {"status_code", "error_code", "outcome", "code_outcome", "problem_code", "event", "level",
                 "logger", "key_id", "key_prefix"}
_BINARY = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")  # decoded image bytes, not text
# b'…' (also escaped inside another repr); one never closed runs to the end
_BYTES_REPR = re.compile(r"(?<!\w)b(\\*)(['\"])(?:.*?(?<!\\)\1\2|.*)", re.DOTALL)
_BOT_TOKEN = re.compile(r"\d{6,12}:[A-Za-z0-9_-]{30,}")
_API_KEY = re.compile(r"\brk_([0-9a-f]{12})_[A-Za-z0-9_-]+")  # the shape core.services.api_keys gives keys; prefix kept
_CREDENTIAL = re.compile(r"\b(Bearer|Basic)\s+\S+", re.IGNORECASE)
_HEX_RUN = re.compile(r"[0-9a-fA-F]{40,}")
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/=_-]{40,}")
_PHONE = re.compile(r"(?<![\d+])(?:\+7|[78])(?:[\s()-]{0,2}\d){10}(?!\d)")
_CODE = re.compile(r"(?<![\w.:/-])\d{6}(?![\w.:/-])")
# PostgreSQL quotes the offending values in an error's DETAIL: "Key (phone)=(+7…) already exists", "Failing row …"
_ROW_VALUES = re.compile(r"(Key \([^)\n]*\)=|Failing row contains )[^\n]*")
MAX_TEXT = 2_000  # one message or field
MAX_TRACEBACK = 12_000  # a rendered traceback
# aiohttp's HTTP parser errors quote the raw request (a frame, a key, a header with an IIN) in their message;
# matched by module name because core does not import aiohttp.
_REQUEST_PARSE_ERRORS = "aiohttp.http_exceptions"
# Loggers that print bound SQL parameters or result rows (names, phones, stored responses) below WARNING.
_PARAMETER_LOGGERS = ("sqlalchemy", "aiosqlite", "asyncpg")


def _withheld(match: re.Match[str]) -> str:
    return f"[{len(match.group(0))} characters withheld]"


def _high_entropy(match: re.Match[str]) -> str:
    """A run mixing upper case, lower case and digits is base64 (a frame, a key, a token), not a word or a path."""
    run = match.group(0)
    mixed = any(c.isupper() for c in run) and any(c.islower() for c in run) and any(c.isdigit() for c in run)
    return _withheld(match) if mixed else run


def _cap(text: str, limit: int) -> str:
    """Head and tail kept, the result within the limit (so a second pass leaves it alone)."""
    if len(text) <= limit:
        return text
    room = limit - len(f"…[{len(text)} characters withheld]…")
    head, tail = room * 3 // 4, room - room * 3 // 4
    return f"{text[:head]}…[{len(text) - head - tail} characters withheld]…{text[len(text) - tail:]}"


def scrub_text(text: str, limit: int = MAX_TEXT) -> str:
    """One string made safe to log (the order matters: whole secrets go before the patterns that could split them)."""
    if _BINARY.search(text):
        return f"[{len(text)} characters of binary withheld]"
    text = _BYTES_REPR.sub(lambda m: f"<{len(m.group(0))} characters of bytes withheld>", text)
    text = _ROW_VALUES.sub(r"\1[values withheld]", text)
    text = _BOT_TOKEN.sub("[bot token withheld]", text)
    text = _API_KEY.sub(r"rk_\1_[withheld]", text)
    text = _CREDENTIAL.sub(r"\1 [withheld]", text)
    text = _HEX_RUN.sub(_withheld, text)
    text = _BASE64_RUN.sub(_high_entropy, text)
    text = _IIN_PATTERN.sub(lambda m: mask_iin(m.group(0)), text)
    text = _PHONE.sub("[phone withheld]", text)
    text = _CODE.sub("[6 digits withheld]", text)
    return _cap(text, limit)


def _scrub(value: object, limit: int = MAX_TEXT) -> object:
    if isinstance(value, str):
        return scrub_text(value, limit)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes withheld>"
    if isinstance(value, dict):
        return {k: _scrub(v, limit) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub(v, limit) for v in value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return scrub_text(repr(value), limit)  # the renderer would print this repr unscrubbed


def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    for key in list(event_dict):
        if key in ("timestamp", "exc_info"):  # ours; a traceback is redacted once rendered, as "exception"
            continue
        if key not in _ALLOWED_KEYS and _FORBIDDEN_KEYS.search(key):
            event_dict[key] = "[withheld]"
        else:
            event_dict[key] = _scrub(event_dict[key], MAX_TRACEBACK if key == "exception" else MAX_TEXT)
    return event_dict


def _exception(exc_info: object) -> BaseException | None:
    if exc_info is True:
        return sys.exc_info()[1]
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3 and isinstance(exc_info[1], BaseException):
        return exc_info[1]
    return None


def withhold_request_bytes(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """A request that failed to parse is logged by its error's class only, never its message or traceback, and
    at most as a warning: a malformed request is the client's doing."""
    exc, seen = _exception(event_dict.get("exc_info")), set()
    while exc is not None and id(exc) not in seen:
        if type(exc).__module__ == _REQUEST_PARSE_ERRORS:
            event_dict.pop("exc_info")
            event_dict.update(event="malformed request refused", error_type=type(exc).__name__,
                              library_message=event_dict.get("event"))
            if event_dict.get("level") in ("error", "critical", "exception"):
                event_dict["level"] = "warning"
            break
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return event_dict


def configure_logging(level: str = "INFO", fmt: str = "console", stream: IO[str] | None = None) -> None:
    """Route stdlib and structlog records through the same redacting formatter, to stderr by default."""
    shared: list[Processor] = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
              structlog.processors.TimeStamper(fmt="iso", utc=True), structlog.stdlib.add_logger_name]
    renderer = (structlog.processors.JSONRenderer() if fmt == "json" else
                structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback))
    structlog.configure(
        # a record below the level is dropped before any work (the access log's line per request, at WARNING);
        # redacted here too, so that a record from our code reaching any other handler is already safe
        processors=[structlog.stdlib.filter_by_level, *shared, redact,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, withhold_request_bytes,
                    structlog.processors.format_exc_info, redact, renderer],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _PARAMETER_LOGGERS:  # whatever the level asked for: never bound parameters or rows
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
