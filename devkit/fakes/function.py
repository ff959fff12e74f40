"""A stand-in for the comparison function over HTTP: records every request, answers what the
test scripts (a match by default, and ready to GET /ready), so the connector's client meets real
sockets and bytes."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from devkit.fakes.loopback import LoopbackServer

PROBE = b"\xff\xd8\xff probe"
REFS = [("r0", b"\xff\xd8\xff alice"), ("r1", b"\xff\xd8\xff bob")]

Reply = tuple[int, dict[str, str], bytes]


def json_reply(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return (
        status,
        {"Content-Type": "application/json", **(headers or {})},
        json.dumps(body).encode(),
    )


def match_answer(matched: str = "r1", **extra: Any) -> dict[str, Any]:
    return {
        "verdict": "match",
        "matched_id": matched,
        "score": 0.71,
        "threshold": 0.55,
        "engine": "local",
        "faces_in_probe": 1,
        "elapsed_ms": 143.2,
        **extra,
    }


def ready_answer(engine: str = "local") -> Reply:
    """GET /ready of a function that can serve (docs/api.md §1)."""
    return json_reply({"status": "ready", "engine": engine})


def failing_answer(reason: str, code: str = "config_error") -> Reply:
    """GET /ready of a function that cannot: the error each request would get, as a 503."""
    return json_reply({"status": "failing", "code": code, "reason": reason}, 503)


def default_reply(path: str, headers: dict[str, str], body: Any) -> Reply:
    """Ready on GET .../ready (`body` None), a match to anything else."""
    return (
        ready_answer() if body is None and path.endswith("/ready") else json_reply(match_answer())
    )


class FakeFunction(LoopbackServer):
    """Records every request; `reply(path, headers, body)` decides the answer (`body` is the
    parsed JSON of a POST, None for a GET)."""

    quiet_errors = True  # clients that give up reset their connections (the timeout tests)

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str], Any]] = []
        self.reply: Callable[[str, dict[str, str], Any], Reply] = default_reply
        self._lock = threading.Lock()
        super().__init__()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._answer(None)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._answer(json.loads(raw))

            def _answer(self, body: Any) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                with fake._lock:
                    fake.seen.append((self.path, headers, body))
                status, reply_headers, data = fake.reply(self.path, headers, body)
                try:
                    self.send_response(status)
                    for name, value in reply_headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the timeout tests)

        return Handler
