"""A per-source brake on failed authentications: an address that keeps sending badly signed
requests is answered 429 for a while. A correctly signed request is never refused by it, so
devices behind one NAT or proxy keep working while a neighbour fails."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from faceid_core.errors import Refusal


class FailedAuthLimiter:
    """After `limit` failed authentications from one source within `window_s`, its further
    failures are answered 429 for the rest of the window."""

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
                raise Refusal(
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
