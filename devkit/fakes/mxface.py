"""A fake MXFace face API (REFERENCE.md §3) on 127.0.0.1, in-process for tests or as a process
for benchmarks:

    python -m devkit.fakes.mxface [--port 0] [--delay-ms 300] [--verify same-image|match|no-match]
                                  [--face-box X,Y,W,H]

prints the verify URL as its first stdout line. The accepted key is read from the environment
variable FAKE_MXFACE_KEY; when it is unset a random key is generated and printed as the second
line (`key=...`).

It behaves like the real service where REFERENCE.md says how (Subscriptionkey check and its 401
body, the two 400 bodies, the 10 MB body cap) and is scripted per test for the rest: queue the
next answers with `enqueue`, or change `verify_rule` / `detect_reply`. Without a script, two
identical images match and any others do not. Like the real service, a "no face" comparison does
not say which image lacked one; detect then finds no face in either image (unless queued).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler
from typing import Any

from devkit.fakes.loopback import LoopbackServer
from devkit.secrets_used import register

VERIFY_PATH = "/api/v3/face/verify"
DETECT_PATH = "/api/v3/face/detect"
STATS_PATH = "/_fake/stats"
MAX_BODY_BYTES = 10_000_000

UNAUTHORIZED_BODY = {
    "code": 401,
    "error": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
    "provide a valid key for an active subscription and use a correct API endpoint.",
}
INVALID_REQUEST_BODY = {
    "errorMessage": "Invalid request. Please check the request body and try again.",
    "errorCode": 400,
}
INVALID_BASE64_BODY = {"message": "The input is not a valid Base-64 string.", "errorCode": 400}
NO_FACE_BODY = {"code": 400, "message": "No face detected or quality of face is very low."}
SERVER_ERROR_BODY = {"code": 500, "message": "An error occurred while processing the request."}
IMAGE_MAGICS = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM")  # JPEG, PNG, BMP
FIELDS = {VERIFY_PATH: ("encoded_image1", "encoded_image2"), DETECT_PATH: ("encoded_image",)}


@dataclass(frozen=True)
class Reply:
    """One scripted answer. `body`: a JSON value, raw bytes, or None for an empty body."""

    status: int = 200
    body: Any = None
    delay_s: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()


def _rect(x: float = 40, y: float = 40, width: float = 120, height: float = 150) -> dict:
    return {"x": x, "y": y, "width": width, "height": height}


def _matched_face(result: int, confidence: float, probe_width: float = 120) -> dict:
    return {
        "matchResult": result,
        "confidence": confidence,
        "image1_face": {"faceRectangle": _rect(), "quality": 0.93},
        "image2_face": {"faceRectangle": _rect(width=probe_width), "quality": 0.91},
    }


def compared(*faces: tuple[int, float] | tuple[int, float, float]) -> Reply:
    """A 200 comparison with one `(matchResult, confidence)` entry per face found in image 2,
    or `(matchResult, confidence, width)` to give that face's width (120 px otherwise)."""
    return Reply(200, {"matchedFaces": [_matched_face(*face) for face in faces]})


def match(confidence: float = 92.5) -> Reply:
    return compared((1, confidence))


def no_match(confidence: float = 23.0) -> Reply:
    return compared((0, confidence))


def unauthorized() -> Reply:
    return Reply(401, UNAUTHORIZED_BODY)


def invalid_request() -> Reply:
    return Reply(400, INVALID_REQUEST_BODY)


def invalid_base64() -> Reply:
    return Reply(400, INVALID_BASE64_BODY)


def no_face_200() -> Reply:
    """The engine failure MXFace reports inside an HTTP 200."""
    return Reply(200, NO_FACE_BODY)


def empty_matches() -> Reply:
    return Reply(200, {"matchedFaces": []})


def rate_limited(retry_after: str | None = None) -> Reply:
    """MXFace's 429 has no body; a Retry-After header only when asked for."""
    return Reply(429, None, headers=(("Retry-After", retry_after),) if retry_after else ())


def server_error() -> Reply:
    return Reply(500, SERVER_ERROR_BODY)


def slow(reply: Reply, seconds: float) -> Reply:
    return replace(reply, delay_s=seconds)


def detected(
    boxes: Iterable[tuple[float, float, float, float]] = ((40, 40, 120, 150),),
    *,
    wrapped: bool = False,
    quality: float | None = 0.9,
) -> Reply:
    """A face/detect answer, `{"faces": [...]}` or the same wrapped in a one-element array."""
    faces = [{"faceRectangle": _rect(*box), "quality": quality} for box in boxes]
    body: Any = {"faces": faces}
    return Reply(200, [body] if wrapped else body)


def _says_no_face(reply: Reply) -> bool:
    """Whether a comparison reply is MXFace's "no face" (an error naming it, or no faces)."""
    body = reply.body if isinstance(reply.body, dict) else {}
    text = str(body.get("message") or body.get("errorMessage") or "").lower()
    return body.get("matchedFaces") == [] or "no face" in text


def same_image_rule(image1: bytes, image2: bytes) -> Reply:
    """The default comparison: identical image bytes match, anything else does not."""
    return match(97.0) if image1 == image2 else no_match(18.0)


#: Comparison rules for a fake in its own process (`--verify`).
VERIFY_RULES: dict[str, Callable[[bytes, bytes], Reply]] = {
    "same-image": same_image_rule,
    "match": lambda _a, _b: match(),
    "no-match": lambda _a, _b: no_match(),
}


@dataclass(frozen=True)
class Recorded:
    """What the fake saw of one request. Images are kept as SHA-256 digests only."""

    path: str
    headers: dict[str, str]
    status: int
    body_bytes: int
    digests: dict[str, str] = field(default_factory=dict)
    service_s: float = 0.0


class FakeMXFace(LoopbackServer):
    """The fake server. Thread-safe; `key` may be changed at any time (key rotation)."""

    def __init__(
        self,
        key: str | None = None,
        *,
        delay_s: float = 0.0,
        max_body_bytes: int = MAX_BODY_BYTES,
        port: int = 0,
    ) -> None:
        self.key = key or secrets.token_urlsafe(24)
        self.delay_s = delay_s
        self.max_body_bytes = max_body_bytes
        self.verify_rule: Callable[[bytes, bytes], Reply] = same_image_rule
        self.detect_reply: Reply = detected()
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Reply]] = {VERIFY_PATH: deque(), DETECT_PATH: deque()}
        self._records: list[Recorded] = []
        self._faceless: set[bytes] = set()  # digests of images in a "no face" comparison
        super().__init__(port=port)

    @property
    def key(self) -> str:
        """The one Subscriptionkey accepted."""
        return self._key

    @key.setter
    def key(self, value: str) -> None:
        register("MXFace key (FakeMXFace)", value)
        self._key = value

    # -- addresses ---------------------------------------------------------------------
    @property
    def verify_url(self) -> str:
        """What MXFACE_API_URL takes (detect is derived from it)."""
        return self.url + VERIFY_PATH

    @property
    def detect_url(self) -> str:
        return self.url + DETECT_PATH

    @property
    def stats_url(self) -> str:
        """GET: `{"requests": [{"path", "status", "service_ms"}]}`, for a fake in a process."""
        return self.url + STATS_PATH

    def handler(self) -> type[BaseHTTPRequestHandler]:
        return _handler_for(self)

    # -- scripting -----------------------------------------------------------------------
    def enqueue(self, *replies: Reply, path: str = VERIFY_PATH) -> None:
        """Answer the next requests to `path` with these, in order, then go back to the rule."""
        with self._lock:
            self._queues[path].extend(replies)

    def pending(self, path: str = VERIFY_PATH) -> int:
        with self._lock:
            return len(self._queues[path])

    def reset(self) -> None:
        """Forget scripts and records; the key and delay stay."""
        with self._lock:
            for queue in self._queues.values():
                queue.clear()
            self._records.clear()
            self._faceless.clear()
            self.verify_rule = same_image_rule
            self.detect_reply = detected()

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._records)

    def count(self, path: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self._records if path is None or r.path == path)

    # -- behaviour -----------------------------------------------------------------------
    def _next_reply(self, path: str, images: list[bytes]) -> Reply:
        digests = [hashlib.sha256(image).digest() for image in images]
        with self._lock:
            reply = self._queues[path].popleft() if self._queues[path] else None
            if reply is None and path == DETECT_PATH and digests[0] in self._faceless:
                reply = no_face_200()
        if reply is None:
            reply = self.verify_rule(*images) if path == VERIFY_PATH else self.detect_reply
        if path == VERIFY_PATH and _says_no_face(reply):
            with self._lock:
                self._faceless.update(digests)
        return reply

    def answer(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[Reply, dict]:
        """The reply to one well-sized POST, checked in the order the real service does."""
        if headers.get("subscriptionkey") != self.key:
            return unauthorized(), {}
        try:
            body = json.loads(raw)
        except ValueError:
            return invalid_request(), {}
        names = FIELDS[path]
        if not isinstance(body, dict) or not all(isinstance(body.get(n), str) for n in names):
            return invalid_request(), {}
        images = []
        for name in names:
            try:
                images.append(base64.b64decode(body[name], validate=True))
            except (binascii.Error, ValueError):
                return invalid_base64(), {}
        digests = {n: hashlib.sha256(img).hexdigest() for n, img in zip(names, images, strict=True)}
        if not all(img.startswith(IMAGE_MAGICS) for img in images):
            return invalid_request(), digests
        return self._next_reply(path, images), digests

    def _record(self, record: Recorded) -> None:
        with self._lock:
            self._records.append(record)


def _handler_for(fake: FakeMXFace) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like the real service behind its gateway
        disable_nagle_algorithm = True  # headers and body go out in two writes

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, reply: Reply) -> None:
            if isinstance(reply.body, bytes):
                payload = reply.body
            elif reply.body is None:
                payload = b""
            else:
                payload = json.dumps(reply.body).encode()
            self.send_response(reply.status)
            if payload:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            if self.path != STATS_PATH:
                self._send(Reply(404, {"code": 404, "message": "Resource not found"}))
                return
            stats = [
                {"path": r.path, "status": r.status, "service_ms": r.service_s * 1000}
                for r in fake.requests
            ]
            self._send(Reply(200, {"requests": stats}))

        def do_POST(self) -> None:
            started = time.perf_counter()
            path = self.path.split("?", 1)[0]
            headers = {k.lower(): v for k, v in self.headers.items()}
            length = int(self.headers.get("Content-Length") or 0)
            digests: dict[str, str] = {}
            if length > fake.max_body_bytes:
                self._discard(length)
                reply = Reply(413, None)
            else:
                raw = self.rfile.read(length)
                if path not in FIELDS:
                    reply = Reply(404, {"code": 404, "message": "Resource not found"})
                else:
                    reply, digests = fake.answer(path, headers, raw)
            # Recorded before the answer (and its delay, counted in), so a client that has its
            # answer, or gave up waiting for it, sees the record.
            delay = fake.delay_s + reply.delay_s
            elapsed = time.perf_counter() - started + delay
            fake._record(Recorded(path, headers, reply.status, length, digests, elapsed))
            if delay:
                time.sleep(delay)
            try:
                self._send(reply)
            except OSError:  # the client gave up (its deadline) before the answer
                self.close_connection = True

        def _discard(self, length: int) -> None:
            while length > 0:
                chunk = self.rfile.read(min(length, 1 << 20))
                if not chunk:
                    break
                length -= len(chunk)

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake MXFace API for tests and benchmarks")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added to every answer")
    parser.add_argument(
        "--verify", choices=sorted(VERIFY_RULES), default="same-image", help="how verify answers"
    )
    parser.add_argument("--face-box", help="the one face detect finds, X,Y,W,H in pixels")
    args = parser.parse_args(argv)
    key = os.environ.get("FAKE_MXFACE_KEY")
    fake = FakeMXFace(key, delay_s=args.delay_ms / 1000, port=args.port)
    fake.verify_rule = VERIFY_RULES[args.verify]
    if args.face_box:
        x, y, w, h = (float(v) for v in args.face_box.split(","))
        fake.detect_reply = detected([(x, y, w, h)])
    print(fake.verify_url, flush=True)
    if not key:
        print(f"key={fake.key}", flush=True)
    fake.serve_forever()


if __name__ == "__main__":
    main()
