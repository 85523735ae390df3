"""Structured logs: one JSON object per line on stderr, for structlog and stdlib loggers alike.

Request-scoped values (the request id) are bound with ``structlog.contextvars`` by the
gateway, so every line logged while a request is handled carries them, including lines
from stdlib loggers (``logging.getLogger("shipyard.…")``) used across the code base.

structlog renders straight to bytes with orjson (no stdlib handler on the hot path): the
access log writes one line per request at thousands of requests per second.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog

_HANDLER_MARK = "_shipyard_handler"


def _orjson_str(event: Any, **kw: Any) -> str:
    return orjson.dumps(event, **kw).decode()


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Idempotent: safe to call from the app factory, the worker and the CLI."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "console":
        structlog.configure(
            processors=[*shared, structlog.dev.ConsoleRenderer(colors=False)],
            wrapper_class=structlog.make_filtering_bound_logger(numeric),
            logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
            cache_logger_on_first_use=False,
        )
        renderer: Any = structlog.dev.ConsoleRenderer(colors=False)
    else:
        structlog.configure(
            processors=[
                *shared,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(serializer=orjson.dumps),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(numeric),
            logger_factory=structlog.BytesLoggerFactory(file=sys.stderr.buffer),
            cache_logger_on_first_use=False,
        )
        renderer = structlog.processors.JSONRenderer(
            serializer=lambda obj, **kw: orjson.dumps(obj, default=str).decode()
        )

    # Stdlib loggers (ours and libraries') go through the same processors to the same stream.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, _HANDLER_MARK, False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        setattr(handler, _HANDLER_MARK, True)
        root.addHandler(handler)
    handler.setFormatter(formatter)
    # Our loggers at the chosen level; libraries stay at WARNING (httpx logs every URL at INFO).
    logging.getLogger("shipyard").setLevel(numeric)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)


class AccessLog:
    """Writes the gateway's access line (one per request) straight to bytes.

    The same JSON object the structlog chain renders (``event``, ``level`` and a UTC
    ``timestamp`` ending in ``Z``, after the request's fields), without its processor
    calls and intermediate dicts; in the console format it goes through structlog.
    Lines are dropped when INFO is filtered out, as structlog's filtering logger does.
    """

    def __init__(self, fmt: str) -> None:
        self.enabled = logging.getLogger("shipyard").isEnabledFor(logging.INFO)
        self._json = fmt != "console"
        self._out = sys.stderr.buffer
        self._structlog = structlog.get_logger("shipyard.access")

    def write(self, fields: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if not self._json:
            self._structlog.info("request", **fields)
            return
        fields["event"] = "request"
        fields["level"] = "info"
        fields["timestamp"] = datetime.now(UTC)
        self._out.write(orjson.dumps(fields, option=_LINE_OPTIONS))
        self._out.flush()


_LINE_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
