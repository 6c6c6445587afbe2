"""Structured logs: one JSON object per line, carrying the id of the request being served.

Every line has ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``msg`` and ``request_id`` (null
outside a request); access lines add ``method``, ``path``, ``status`` and ``duration_ms``.
The request id lives in a context variable set by the middleware, so lines logged from worker
threads (``run_in_threadpool`` copies the context) carry it too.

Nothing here logs headers; as a second line of defence the formatters blank anything that
looks like a bearer token in a message.
"""

from __future__ import annotations

import json
import logging
import re
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

REQUEST_ID: ContextVar[str | None] = ContextVar("cnnvis_request_id", default=None)
ACCESS_FIELDS = ("method", "path", "status", "duration_ms")
_BEARER = re.compile(r"(?i)\b(bearer)(\s+)[^\s,;\"']+")


_factory_installed = False


def stamp_request_ids() -> None:
    """Give every log record the current request id when it is created (idempotent).

    A record factory rather than a handler filter, so that any handler — ours, uvicorn's,
    pytest's caplog, an OpenTelemetry bridge — sees the id, even one that formats the record
    later, outside the request's context.
    """
    global _factory_installed
    if _factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        request_id = REQUEST_ID.get()
        if request_id is not None:
            record.request_id = request_id
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed = True


def redact(text: str) -> str:
    return _BEARER.sub(r"\1\2[redacted]", text)


class RequestIdFilter(logging.Filter):
    """Puts ``request_id`` on every record (for plain-text formats)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
            "request_id": request_id if request_id not in (None, "-") else REQUEST_ID.get(),
        }
        for key in ACCESS_FIELDS:
            if hasattr(record, key):
                line[key] = getattr(record, key)
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def log_config(level: str = "info", fmt: str = "json") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the process, given to uvicorn as ``log_config``.

    uvicorn's own loggers propagate to the root handler, so its start-up and shutdown lines
    come out in the same format; its access log is off (the middleware writes access lines
    with the request id instead).
    """
    formatter = "service.logs.JsonFormatter" if fmt == "json" else "service.logs.TextFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "service.logs.RequestIdFilter"}},
        "formatters": {"main": {"()": formatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "main",
                "filters": ["request_id"],
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
