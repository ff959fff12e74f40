"""The structured log stream (function/faceid_core/logs.py): one JSON object per stdout line, the
libraries' records among ours, each in the trace of the request being served."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from faceid_core.logs import log, traced

TRACE = "105445aa7843bc8bf206b12000100000"


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_a_library_warning_joins_the_stream_in_the_trace_of_the_request(capsys, monkeypatch):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo-project")
    capsys.readouterr()
    with traced(TRACE):
        logging.getLogger("urllib3.connectionpool").warning("Connection pool is full: %s", "fn")
        log("INFO", "verify done", score=0.97, engine=None)
    library, ours = lines(capsys)
    assert library == {
        "severity": "WARNING",
        "message": "Connection pool is full: fn",
        "time": library["time"],
        "trace": TRACE,
        "logging.googleapis.com/trace": f"projects/demo-project/traces/{TRACE}",
        "logger": "urllib3.connectionpool",
    }
    assert list(ours) == ["severity", "message", "time", "trace", "logging.googleapis.com/trace",
                          "score"]  # fmt: skip
    assert (ours["severity"], ours["score"]) == ("INFO", 0.97)


def test_outside_a_request_a_line_names_no_trace_unless_given_one(capsys):
    capsys.readouterr()
    log("WARNING", "message dropped", queue="webex")
    log("WARNING", "message dropped", trace=TRACE)  # a queued message's own request
    with traced(TRACE):
        pass
    log("INFO", "after the request")
    first, second, third = lines(capsys)
    assert "trace" not in first and second["trace"] == TRACE and "trace" not in third


def test_a_library_exception_shows_its_type_and_never_its_text(capsys):
    capsys.readouterr()
    try:
        raise ValueError("https://example.invalid/?key=not-for-the-log")
    except ValueError:
        logging.getLogger("google.auth").exception("refresh failed")
    (line,) = lines(capsys)
    assert (line["message"], line["error_type"]) == ("refresh failed", "ValueError")
    assert "not-for-the-log" not in json.dumps(line)
