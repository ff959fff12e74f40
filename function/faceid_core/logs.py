"""One JSON object per stdout line: the shape Cloud Run parses as a structured log entry. A
command-line tool whose stdout holds its results (a script reads them) logs to stderr instead
(`logs_to_stderr`).

Built on the standard `logging` module, so that what the libraries log joins the same stream: the
handler sits on the root logger, where urllib3's, google-auth's and (the connector's) gunicorn's
records arrive, from WARNING up. Our own records go through the `faceid` logger, at the level
`set_level` chose. The request being served is a context variable (`request_trace`), set once per
request at each HTTP edge: every line logged meanwhile carries its trace, wherever it comes from.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal

Severity = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LOGGER = "faceid"
#: The record attributes that carry log()'s fields and explicit trace to the formatter.
_FIELDS = "faceid_fields"
_TRACE = "faceid_trace"

#: The trace of the request this thread (or task) is serving, if any.
request_trace: ContextVar[str | None] = ContextVar("faceid_request_trace", default=None)


def trace_id(header_value: str | None) -> str | None:
    """The trace part of `TRACE/SPAN;o=1`, if it looks like one (hex, bounded)."""
    if not header_value:
        return None
    trace = header_value.split("/", 1)[0].strip()
    if 0 < len(trace) <= 64 and all(c in "0123456789abcdefABCDEF" for c in trace):
        return trace.lower()
    return None


@contextmanager
def traced(trace: str | None) -> Iterator[None]:
    """Every line logged inside, in this thread, names `trace`: one request's work joins up."""
    token = request_trace.set(trace)
    try:
        yield
    finally:
        request_trace.reset(token)


def trace_fields(trace: str | None) -> dict[str, str]:
    """Our `trace`, plus the field Cloud Logging joins on when the project is known."""
    if not trace:
        return {}
    fields = {"trace": trace}
    project = os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCP_PROJECT")
    if project:
        fields["logging.googleapis.com/trace"] = f"projects/{project}/traces/{trace}"
    return fields


class JsonFormatter(logging.Formatter):
    """A record as one line: severity, message, time, trace, then the record's own fields.

    A library's record also names its logger; of an exception it shows only the type, as our
    own lines do: a traceback or an exception's text may quote a request, a URL or a key."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
        }
        entry.update(trace_fields(getattr(record, _TRACE, None) or request_trace.get()))
        fields: dict[str, Any] | None = getattr(record, _FIELDS, None)
        if fields is None:
            entry["logger"] = record.name
            if record.exc_info and record.exc_info[0] is not None:
                entry["error_type"] = record.exc_info[0].__name__
        else:
            entry.update({k: v for k, v in fields.items() if v is not None})
        return json.dumps(entry, default=str, separators=(",", ":"))


class StdStreamHandler(logging.Handler):
    """Writes to whatever sys.stdout (or sys.stderr: `to_stderr`) is when the record comes (tests
    swap them), flushed at once."""

    to_stderr = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            stream = sys.stderr if self.to_stderr else sys.stdout
            stream.write(line + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def _install() -> StdStreamHandler:
    """The one handler, on the root logger (libraries), on ours and on "google", which do not
    propagate: a handler someone else puts on the root (functions-framework's) never doubles
    them, and Google's API clients leave a "google" logger with a handler as it is (they cut an
    unconfigured one off from the root: google.api_core.client_logging)."""
    handler = StdStreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    for name in (LOGGER, "google"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.propagate = False
    logging.getLogger(LOGGER).setLevel(logging.DEBUG)
    return handler


_handler = _install()
_logger = logging.getLogger(LOGGER)


@contextmanager
def logs_to_stderr() -> Iterator[None]:
    """Inside, every line goes to stderr: a command's stdout then holds only its results, which
    a script may parse (`--json`). The service keeps stdout, where Cloud Run reads its log."""
    before, _handler.to_stderr = _handler.to_stderr, True
    try:
        yield
    finally:
        _handler.to_stderr = before


def set_level(severity: str) -> None:
    """Drop our records below `severity` (the connector's `log.level`); unknown names keep all."""
    level = logging.getLevelName(severity.upper())
    _logger.setLevel(level if isinstance(level, int) else logging.DEBUG)


def log(severity: Severity, message: str, *, trace: str | None = None, **fields: Any) -> None:
    """Write one structured record. Callers pass facts (codes, scores), never images or keys;
    `trace` is for work done on behalf of a request already over (a queued message), the
    current request's trace is found without it."""
    level = logging.getLevelName(severity)
    _logger.log(level, message, extra={_FIELDS: fields, _TRACE: trace})
