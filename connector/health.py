"""A check whose answer is reused for a while: /healthz needs no authentication, so it must not
let anyone drive traffic to the function. At most one check runs at a time; callers that arrive
meanwhile get the previous answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

FUNCTION_CHECK_MAX_AGE_S = 30.0


class CachedCheck:
    def __init__(
        self,
        check: Callable[[], str | None],
        max_age_s: float = FUNCTION_CHECK_MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`check` returns None when healthy, else a short reason."""
        self._check = check
        self._max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: tuple[str | None, float] | None = None  # (reason, when)
        self.runs = 0

    def result(self) -> tuple[str | None, float]:
        """(reason or None, age of that answer in seconds)."""
        last = self._last
        if last is not None and self._clock() - last[1] < self._max_age_s:
            return last[0], self._clock() - last[1]
        if not self._lock.acquire(blocking=last is None):
            assert last is not None
            return last[0], self._clock() - last[1]  # another caller is checking right now
        try:
            last = self._last
            if last is None or self._clock() - last[1] >= self._max_age_s:
                self.runs += 1
                try:
                    reason = self._check()
                except Exception as exc:  # a health probe must answer, whatever happens
                    reason = f"check failed ({type(exc).__name__})"
                last = self._last = (reason, self._clock())
        finally:
            self._lock.release()
        return last[0], self._clock() - last[1]
