"""A per-source brake on failed authentications: an address that keeps sending badly signed
requests is answered 429 for a while. A correctly signed request is never refused by it, so
devices behind one NAT or proxy keep working while a neighbour fails. The console's logins use
it too, per account and per address (console/auth.py)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from faceid_core.errors import Refusal


class FailedAuthLimiter:
    """After `limit` failed authentications from one source within `window_s`, its further
    failures are answered 429 for the rest of the window.

    At most `max_sources` windows are kept, and only windows that have ended make room: a flood
    of new sources never erases the count of one still inside its window. While every kept
    window is live, a new source's failures go uncounted until one ends (the brake's other
    key, or the window's end, still stands)."""

    def __init__(
        self,
        limit: int = 10,
        window_s: float = 60.0,
        max_sources: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit, self.window_s, self.max_sources = limit, window_s, max_sources
        self._clock = clock
        # source -> (window start, failures), in the order the windows started (so they end).
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, source: str) -> None:
        """Refusal rate_limited while `source` has failed `limit` times in its window."""
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

    def failed(self, source: str) -> int:
        """Count a failure of `source`; returns its failures in this window (0: not counted,
        the table is full of live windows). It equals `limit` once: when the brake engages."""
        with self._lock:
            now = self._clock()
            self._drop_ended(now)
            entry = self._failures.get(source)
            if entry is not None and now - entry[0] < self.window_s:
                started, count = entry[0], entry[1] + 1
                self._failures[source] = (started, count)  # keeps its place: same start
                return count
            self._failures.pop(source, None)
            if len(self._failures) >= self.max_sources:
                return 0
            self._failures[source] = (now, 1)
            return 1

    def _drop_ended(self, now: float) -> None:
        while self._failures:
            source, (started, _) = next(iter(self._failures.items()))
            if now - started < self.window_s:
                return
            del self._failures[source]
