"""Logging set-up for every command: ``text`` or ``json`` lines on stderr, each carrying the
request's trace id, session and component when known (context variables, set by the server's
middleware and wherever the pipeline knows them, read by :class:`ContextFilter`)."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

__all__ = ["FORMATS", "LEVELS", "ContextFilter", "JsonFormatter", "component", "configure",
           "session", "trace_id"]

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")

#: The trace id of the request being served (None outside a request).
trace_id: ContextVar[str | None] = ContextVar("boride_trace_id", default=None)
#: The session the work being done belongs to, when known.
session: ContextVar[str | None] = ContextVar("boride_session", default=None)
#: The component being started or called, when known.
component: ContextVar[str | None] = ContextVar("boride_component", default=None)

_CONTEXT = (("trace_id", trace_id), ("session", session), ("component", component))


class ContextFilter(logging.Filter):
    """Adds ``trace_id``, ``session`` and ``component`` (None when unknown) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _CONTEXT:
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, and trace_id,
    session, component when known (an exception's traceback as ``exc``)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage()}
        for name, _ in _CONTEXT:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        for key in ("method", "path", "status", "duration_ms"):  # the access line's
            if hasattr(record, key):
                line[key] = getattr(record, key)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = " ".join(f"{name}={getattr(record, name)}" for name, _ in _CONTEXT
                         if getattr(record, name, None) is not None)
        return f"{text} [{extra}]" if extra else text


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is at each line: while ``boride run``'s live table
    redirects stderr, log lines then go above the table instead of through it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass


_HANDLER_NAME = "boride"


def configure(level: str = "info", fmt: str = "text") -> None:
    """Log ``level`` and above from every logger to stderr in ``fmt`` (``text`` or ``json``);
    called again, it replaces its own handler."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         _TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # one line per component call is too much, below debug
    logging.getLogger("httpx").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
