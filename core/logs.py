"""Structured logging that cannot leak what it must not.

Every record passes through :func:`redact`: whole IINs are masked to their last 4 digits, and fields
that could carry a code, a secret, a token, a face encoding or image bytes are dropped by name.
"""
from __future__ import annotations

import logging
import re
import sys

import structlog

from core.iin import mask_iin

_IIN_PATTERN = re.compile(r"(?<!\d)\d{12}(?!\d)")
_FORBIDDEN_KEYS = re.compile(r"(code|secret|token|password|key|encoding|frame|image|photo|template)", re.I)
_ALLOWED_KEYS = {"status_code", "error_code", "outcome", "code_outcome", "problem_code", "event", "level",
                 "logger", "timestamp", "exc_info", "key_id", "key_prefix"}


def _scrub(value):
    if isinstance(value, str):
        return _IIN_PATTERN.sub(lambda m: mask_iin(m.group(0)), value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes withheld>"
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub(v) for v in value)
    return value


def redact(_logger, _method, event_dict: dict) -> dict:
    for key in list(event_dict):
        if key not in _ALLOWED_KEYS and _FORBIDDEN_KEYS.search(key):
            event_dict[key] = "[withheld]"
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def configure_logging(level: str = "INFO", fmt: str = "console", stream=None) -> None:
    """Route stdlib and structlog records through the same redacting processors, to stderr by default."""
    shared = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
              structlog.processors.TimeStamper(fmt="iso", utc=True), structlog.stdlib.add_logger_name]
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*shared, redact, structlog.processors.format_exc_info,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(), redact],
        processors=[redact, structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def get_logger(name: str):
    return structlog.get_logger(name)
