"""Device authentication: bearer tokens kept only as SHA-256, compared in constant time, and a
per-source brake on failed attempts so a token cannot be guessed at speed."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from faceverify.errors import FaceIdError

_DUMMY_HASH = hashlib.sha256(b"no such device").hexdigest()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 256:
        return None
    return token


def unauthorized() -> FaceIdError:
    return FaceIdError(401, "unauthorized", "Unknown device or wrong device token")


def authenticate(token_hashes: Mapping[str, str], serial: str, token: str | None) -> None:
    """Raise the same 401 for a wrong token and an unknown serial, after the same amount of work."""
    expected = token_hashes.get(serial, _DUMMY_HASH)
    presented = token_hash(token or "")
    if not hmac.compare_digest(expected, presented) or serial not in token_hashes or not token:
        raise unauthorized()


class FailedAuthLimiter:
    """After `limit` failed authentications from one source within `window_s`, refuse that source
    for the rest of the window (429) without checking tokens at all."""

    def __init__(
        self,
        limit: int = 10,
        window_s: float = 60.0,
        max_sources: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit, self.window_s, self.max_sources = limit, window_s, max_sources
        self._clock = clock
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, source: str) -> None:
        with self._lock:
            entry = self._failures.get(source)
            if entry is None:
                return
            started, count = entry
            left = started + self.window_s - self._clock()
            if left <= 0:
                del self._failures[source]
            elif count >= self.limit:
                raise FaceIdError(
                    429,
                    "rate_limited",
                    "Too many failed authentications from this address; try again later",
                    retry_after=max(1, int(left + 0.999)),
                )

    def failed(self, source: str) -> None:
        with self._lock:
            now = self._clock()
            started, count = self._failures.pop(source, (now, 0))
            if now - started > self.window_s:
                started, count = now, 0
            self._failures[source] = (started, count + 1)
            while len(self._failures) > self.max_sources:
                self._failures.popitem(last=False)
