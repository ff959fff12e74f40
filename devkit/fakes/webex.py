"""A fake Webex messages API (REFERENCE.md §5) on 127.0.0.1, in-process for tests:

    with FakeWebex(token) as webex:
        api_url = webex.api_url            # what [webex] api_url is set to
        webex.enqueue(Reply(429, headers=(("Retry-After", "1"),)))
        ...
        webex.wait_for(1)                  # the messages accepted so far (200)

`POST /v1/messages` takes `Authorization: Bearer <token>` and a JSON body `{roomId, markdown |
text}` or a multipart form with the same fields and one file `files`; each text at most 7439
bytes. A wrong token is a 401, a bad body a 400, both with Webex's error body; a 200 returns the
message. Scripted per test: queued replies (`enqueue`), `hang()` (every request waits until
`release()`), and every request is recorded in `requests` whatever the answer.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from devkit.fakes.loopback import LoopbackServer
from devkit.secrets_used import register

MESSAGES_PATH = "/v1/messages"
MAX_TEXT_BYTES = 7439
HANG_LIMIT_S = 60.0
UNAUTHORIZED_MESSAGE = (
    "The request requires a valid access token set in the Authorization request header."
)


@dataclass(frozen=True)
class Reply:
    """One scripted answer instead of the normal one (the request is still checked first)."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0


@dataclass
class Received:
    """One request as the fake saw it."""

    status: int  # what it answered
    authorization: str | None
    room_id: str | None
    markdown: str | None
    text: str | None
    content_type: str
    files: list[tuple[str, str, bytes]] = field(default_factory=list)  # (filename, type, data)
    at: float = field(default_factory=time.monotonic)


def error_body(message: str, description: str | None = None) -> dict[str, Any]:
    return {
        "message": message,
        "errors": [{"description": description or message}],
        "trackingId": f"ROUTER_{secrets.token_hex(8).upper()}",
    }


def _parse_multipart(
    content_type: str, body: bytes
) -> tuple[dict[str, str], list[tuple[str, str, bytes]]]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ValueError("not multipart")
    fields: dict[str, str] = {}
    files: list[tuple[str, str, bytes]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            raise ValueError(f"part {name!r} is not a simple field")
        filename = part.get_filename()
        if filename is not None:
            if name != "files":
                raise ValueError(f"file field {name!r} (only 'files' is accepted)")
            files.append((filename, part.get_content_type(), payload))
        elif isinstance(name, str):
            fields[name] = payload.decode("utf-8")
    return fields, files


class FakeWebex(LoopbackServer):
    def __init__(self, token: str | None = None) -> None:
        self.token = token or secrets.token_urlsafe(32)
        register("Webex bot token (FakeWebex)", self.token)
        self.requests: list[Received] = []
        self._replies: deque[Reply] = deque()
        self._lock = threading.Condition()
        self._released = threading.Event()
        self._released.set()
        super().__init__()

    @property
    def api_url(self) -> str:
        """What [webex] api_url is set to."""
        return f"{self.url}/v1"

    def close(self) -> None:
        """Release hung requests first, so that they do not hold the shutdown up."""
        self.release()
        super().close()

    # --- scripting -----------------------------------------------------------------------

    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self._replies.extend(replies)

    def hang(self) -> None:
        """Requests from now on get no answer until release() (at most HANG_LIMIT_S)."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def delivered(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.status == 200]

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Received]:
        """Wait until `count` messages were accepted; returns them all."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                accepted = [r for r in self.requests if r.status == 200]
                if len(accepted) >= count:
                    return accepted
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(accepted)} Webex messages, expected {count}")
                self._lock.wait(left)

    def message_with(self, needle: str, timeout_s: float = 10.0) -> Received:
        """The accepted message whose markdown contains `needle` (e.g. a request id)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                for r in self.requests:
                    if r.status == 200 and needle in (r.markdown or r.text or ""):
                        return r
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no Webex message contains {needle!r}")
                self._lock.wait(left)

    # --- the server ------------------------------------------------------------------------

    def _record(self, received: Received) -> None:
        with self._lock:
            self.requests.append(received)
            self._lock.notify_all()

    def _answer(self, headers: Any, body: bytes) -> tuple[int, dict[str, Any], Received]:
        content_type = headers.get("Content-Type", "")
        received = Received(0, headers.get("Authorization"), None, None, None, content_type)
        if received.authorization != f"Bearer {self.token}":
            return 401, error_body(UNAUTHORIZED_MESSAGE), received
        try:
            if content_type.startswith("application/json"):
                data = json.loads(body)
                fields = data if isinstance(data, dict) else {}
                files: list[tuple[str, str, bytes]] = []
            elif content_type.startswith("multipart/form-data"):
                fields, files = _parse_multipart(content_type, body)
            else:
                raise ValueError(f"unsupported Content-Type {content_type!r}")
        except (ValueError, UnicodeDecodeError) as exc:
            return 400, error_body("Unable to parse the request.", str(exc)), received
        received.room_id = fields.get("roomId")
        received.markdown = fields.get("markdown")
        received.text = fields.get("text")
        received.files = files
        texts = [t for t in (received.markdown, received.text) if t is not None]
        if not received.room_id or not texts:
            return 400, error_body("roomId and markdown or text are required."), received
        if any(not isinstance(t, str) or len(t.encode()) > MAX_TEXT_BYTES for t in texts):
            return 400, error_body(f"Message text is over {MAX_TEXT_BYTES} bytes."), received
        if len(files) > 1:
            return 400, error_body("Only one file may be attached."), received
        message = {
            "id": secrets.token_hex(16),
            "roomId": received.room_id,
            "markdown": received.markdown,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        }
        if files:
            message["files"] = [f"https://webexapis.com/v1/contents/{secrets.token_hex(8)}"]
        return 200, message, received

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if self.path != MESSAGES_PATH:
                    self._send(404, error_body("The requested resource could not be found."))
                    return
                fake._released.wait(HANG_LIMIT_S)
                status, answer, received = fake._answer(self.headers, body)
                extra: tuple[tuple[str, str], ...] = ()
                if status == 200:
                    with fake._lock:
                        scripted = fake._replies.popleft() if fake._replies else None
                    if scripted is not None:
                        time.sleep(scripted.delay_s)
                        status, extra = scripted.status, scripted.headers
                        if status != 200:
                            answer = error_body(f"Scripted HTTP {status}.")
                received.status = status
                fake._record(received)
                self._send(status, answer, extra)

            def _send(
                self, status: int, body: dict[str, Any], headers: tuple[tuple[str, str], ...] = ()
            ) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json;charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("TrackingID", body.get("trackingId", "ROUTER_FAKE"))
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        return Handler
