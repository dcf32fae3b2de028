"""Log lines: one JSON object a line (or plain text for `relay dev`), carrying the ids in play.

The ids of what a process is working on — the request, the event, the delivery — are kept in a
context variable, so every line logged while handling it carries them without each call having
to pass them along. Nothing secret is ever put there: ids, counts and status codes only.
"""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any

import orjson

# The fields a line may carry besides time, level, logger and message, in the order shown; a log
# call's `extra=` passes only these (tests/test_logs.py reads every call to hold relay to it).
FIELDS = (
    "request_id",
    "tenant_id",
    "event_id",
    "delivery_id",
    "webhook_id",
    "attempt",
    "trigger",
    "status",
    "status_code",
    "duration_ms",
    "error",
    "method",
    "path",
    "trace_id",
)

# What every LogRecord holds of its own and what formatting adds, then the fields above: any
# other attribute of a record came in through the call's `extra=` undeclared.
_KNOWN = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", *FIELDS}
# Set on a line whose call passed `extra=` keys that FIELDS does not declare: their names.
UNDECLARED = "undeclared_fields"

# One dict per request or job. Code deeper down adds to it in place, so what a handler learns
# (the event id it made) is on the request's closing line even across task boundaries.
_context: ContextVar[dict[str, object] | None] = ContextVar("relay_log_context", default=None)


class LogFormat(StrEnum):
    """RELAY_LOG_FORMAT: `json` for machines, `text` for a person at a terminal."""

    JSON = "json"
    TEXT = "text"


class LogLevel(StrEnum):
    """RELAY_LOG_LEVEL."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class scope:
    """Start a fresh set of ids (one request, one job) for the lines logged inside.

    A class rather than a generator: one is entered for every request and every attempt, and
    contextlib's machinery took 1.3 us against 0.7.
    """

    __slots__ = ("_fields", "_token")

    def __init__(self, **fields: object) -> None:
        self._fields = {k: v for k, v in fields.items() if v is not None}

    def __enter__(self) -> dict[str, object]:
        self._token = _context.set(self._fields)
        return self._fields

    def __exit__(self, *_: object) -> None:
        _context.reset(self._token)


def annotate(**fields: object) -> None:
    """Add ids to the current request's or job's lines (no-op outside a scope)."""
    current = _context.get()
    if current is not None:
        current.update({k: v for k, v in fields.items() if v is not None})


def request_id() -> str | None:
    """The id of the HTTP request being handled, if any (for audit records and errors)."""
    current = _context.get()
    value = current.get("request_id") if current else None
    return value if isinstance(value, str) else None


def _undeclared(record: logging.LogRecord) -> list[str]:
    """The `extra=` keys of one of relay's own log calls that FIELDS does not declare."""
    if record.name != "relay" and not record.name.startswith("relay."):
        return []  # other libraries' extras (uvicorn's `color_message`) are theirs
    return sorted(record.__dict__.keys() - _KNOWN)


def _fields(record: logging.LogRecord) -> dict[str, object]:
    """The ids of the current scope, overridden by any passed as `extra=` to the call.

    A key FIELDS does not declare is a mistake in relay (a typo, a field never added): the line
    names it rather than dropping it unseen, and never shows its value, which FIELDS has not
    vetted as free of secrets. Raising instead would lose the line, in the middle of a request.
    """
    merged = dict(_context.get() or {})
    for name in FIELDS:
        value = record.__dict__.get(name)
        if value is not None:
            merged[name] = value
    if names := _undeclared(record):
        merged[UNDECLARED] = names
    return merged


@lru_cache(maxsize=4)
def _second(whole: int) -> str:
    # Formatted once a second, not once a line: every request logs one.
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def _rfc3339(seconds: float) -> str:
    # Rounded to the microsecond as datetime.fromtimestamp rounds, then cut to milliseconds.
    whole = int(seconds)
    carry, micros = divmod(round((seconds - whole) * 1_000_000), 1_000_000)
    return f"{_second(whole + carry)}{micros // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, then the ids that apply."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


# Line breaks and other control characters (C0, DEL, C1, Unicode line separators).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(text: str) -> str:
    # A request path or an error can carry `%0a` from a client: written as is, it would start a
    # line of the client's making. Escaped, one record is always one line.
    return _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)


class TextFormatter(logging.Formatter):
    """`time level logger message key=value …` for reading at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        ids = "".join(f" {k}={v}" for k, v in _fields(record).items())
        line = f"{self.formatTime(record)} {record.levelname} {record.name} "
        line = _escaped(line + record.getMessage() + ids)
        if record.exc_info:
            # A traceback keeps its lines, indented, so that only a record starts at column 0.
            trace = self.formatException(record.exc_info)
            line += "".join(f"\n  {_escaped(row)}" for row in trace.splitlines())
        return line


# Libraries whose INFO lines repeat, per request or per job, what relay's own lines say.
_QUIETER = {"httpx": logging.WARNING, "arq.worker": logging.WARNING}


def configure(fmt: LogFormat, level: LogLevel) -> None:
    """Send every logger's lines (relay's, uvicorn's, arq's) to stderr in one format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt is LogFormat.JSON else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # No line shows the thread, the process or the calling function, so records need not look
    # them up: the logging module's own switches for that (it is a line per request).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    root.setLevel(level.upper())
    for name, quieter in _QUIETER.items():
        logging.getLogger(name).setLevel(max(quieter, root.level))
    # uvicorn configures its own handlers unless told not to; make sure its lines come here.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
