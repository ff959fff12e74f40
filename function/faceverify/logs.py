"""One JSON object per stdout line: the shape Cloud Run parses as a structured log entry."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

_lock = threading.Lock()
TRACE_HEADER = "X-Cloud-Trace-Context"
SEVERITIES = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_threshold = SEVERITIES["DEBUG"]


def set_level(severity: str) -> None:
    """Drop records below `severity` (the connector's `log.level`); unknown names keep all."""
    global _threshold
    _threshold = SEVERITIES.get(severity.upper(), SEVERITIES["DEBUG"])


def trace_id(header_value: str | None) -> str | None:
    """The trace part of `TRACE/SPAN;o=1`, if it looks like one (hex, bounded)."""
    if not header_value:
        return None
    trace = header_value.split("/", 1)[0].strip()
    if 0 < len(trace) <= 64 and all(c in "0123456789abcdefABCDEF" for c in trace):
        return trace.lower()
    return None


def trace_fields(trace: str | None) -> dict[str, str]:
    if not trace:
        return {}
    fields = {"trace": trace}
    project = os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCP_PROJECT")
    if project:
        fields["logging.googleapis.com/trace"] = f"projects/{project}/traces/{trace}"
    return fields


def log(severity: str, message: str, *, trace: str | None = None, **fields: Any) -> None:
    """Write one structured record. Callers pass facts (codes, scores), never images or keys."""
    if SEVERITIES.get(severity, 50) < _threshold:
        return
    record: dict[str, Any] = {
        "severity": severity,
        "message": message,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
    }
    record.update(trace_fields(trace))
    record.update({k: v for k, v in fields.items() if v is not None})
    line = json.dumps(record, default=str, separators=(",", ":"))
    with _lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
