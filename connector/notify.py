"""A bounded background queue for messages to administrators: a login answer never waits for
them. One worker thread sends each message in turn, honours the server's Retry-After, retries
transient failures a bounded number of times and gives up at once on refusals. A full queue drops
the new message; shutdown drains within a deadline. Every message ends as exactly one of sent,
failed or dropped, counted and logged: nothing is lost silently."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from faceid_core.logs import Severity, log

T = TypeVar("T")

SEND_TIMEOUT_S = 10.0
MAX_ATTEMPTS = 4
BACKOFF_S = (1.0, 2.0, 4.0)
MAX_WAIT_S = 300.0


@dataclass(frozen=True)
class Attempt:
    """What one send did: "sent", "retry" (after `retry_after_s`, or the backoff when None) or
    "failed" (retrying cannot help)."""

    outcome: Literal["sent", "retry", "failed"]
    detail: str = ""
    retry_after_s: float | None = None


def _no_fields(_: Any) -> dict[str, Any]:
    return {}


def _ignore(_: str) -> None:
    pass


class Notifier(Generic[T]):
    def __init__(
        self,
        send: Callable[[T, float], Attempt],
        *,
        name: str = "notify",
        queue_size: int = 100,
        max_attempts: int = MAX_ATTEMPTS,
        backoff_s: tuple[float, ...] = BACKOFF_S,
        max_wait_s: float = MAX_WAIT_S,
        send_timeout_s: float = SEND_TIMEOUT_S,
        on_outcome: Callable[[str], None] = _ignore,
        describe: Callable[[T], dict[str, Any]] = _no_fields,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`send(message, timeout_s)` makes one attempt and must not block past `timeout_s`.
        `on_outcome` hears "sent", "retried", "failed" and "dropped"; `describe` gives the log
        fields of a message (never its content)."""
        self._send = send
        self._name = name
        self._size = queue_size
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._max_wait_s = max_wait_s
        self._send_timeout_s = send_timeout_s
        self._on_outcome = on_outcome
        self._describe = describe
        self._clock = clock
        self._cond = threading.Condition()
        self._jobs: deque[T] = deque()
        self._current: T | None = None
        self._thread: threading.Thread | None = None
        self._deadline: float | None = None  # set by close()
        self._abandoned = False  # close() has counted what was left
        self.counts = {"sent": 0, "retried": 0, "failed": 0, "dropped": 0}

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._jobs) + (self._current is not None)

    def submit(self, message: T) -> bool:
        """Queue without ever blocking; False (and counted as dropped) when full or closed."""
        with self._cond:
            if self._deadline is not None:
                why = "the queue is closed"
            elif len(self._jobs) >= self._size:
                why = f"the queue is full ({self._size} waiting)"
            else:
                self._jobs.append(message)
                if self._thread is None:  # started on first use: nothing runs before a fork
                    self._thread = threading.Thread(
                        target=self._run, name="faceid-notify", daemon=True
                    )
                    self._thread.start()
                self._cond.notify_all()
                return True
        self._count("dropped", message, "WARNING", f"message dropped: {why}", worker=False)
        return False

    def close(self, deadline_s: float) -> int:
        """Send what is queued for at most `deadline_s`, then give up on the rest; returns how
        many were dropped. Later calls do nothing."""
        with self._cond:
            if self._deadline is not None:
                return 0
            self._deadline = self._clock() + deadline_s
            queued = len(self._jobs) + (self._current is not None)
            thread = self._thread
            self._cond.notify_all()
        if thread is None:  # never used (submit starts the worker): nothing to drain or tell
            return 0
        thread.join(max(0.0, self._deadline - self._clock()))
        with self._cond:
            left = list(self._jobs)
            if self._current is not None:
                left.append(self._current)
            self._jobs.clear()
            self._abandoned = True
        for message in left:
            self._count(
                "dropped", message, "WARNING", "message dropped: not sent before shutdown", False
            )
        log(
            "WARNING" if left else "INFO",
            "message queue closed",
            component="connector",
            queue=self._name,
            queued_at_shutdown=queued,
            dropped_at_shutdown=len(left),
            deadline_s=deadline_s,
            totals=dict(self.counts),
        )
        return len(left)

    # --- the worker ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and self._deadline is None:
                    self._cond.wait()
                if not self._jobs or self._abandoned:
                    return
                message = self._current = self._jobs.popleft()
            self._deliver(message)
            with self._cond:
                self._current = None

    def _deliver(self, message: T) -> None:
        for attempt in range(1, self._max_attempts + 1):
            timeout = self._time_left(self._send_timeout_s)
            if timeout <= 0:
                self._count("dropped", message, "WARNING", "message dropped: shutdown deadline")
                return
            try:
                result = self._send(message, timeout)
            except Exception as exc:  # a bug in the sender must not kill the worker
                result = Attempt("retry", f"send failed ({type(exc).__name__})")
            if result.outcome == "sent":
                self._count("sent", message, "INFO", "message sent", attempts=attempt)
                return
            if result.outcome != "retry" or attempt == self._max_attempts:
                why = "refused" if result.outcome != "retry" else "out of retries"
                self._count(
                    "failed", message, "ERROR", f"message failed ({why})", detail=result.detail
                )
                return
            wait = result.retry_after_s
            if wait is None:
                wait = self._backoff_s[min(attempt, len(self._backoff_s)) - 1]
            wait = min(max(wait, 0.0), self._max_wait_s)
            self._count(
                "retried", message, "WARNING", "message retried", detail=result.detail, wait_s=wait
            )
            if not self._pause(wait):
                self._count("dropped", message, "WARNING", "message dropped: shutdown deadline")
                return

    def _time_left(self, wanted: float) -> float:
        with self._cond:
            if self._deadline is None:
                return wanted
            return min(wanted, self._deadline - self._clock())

    def _pause(self, seconds: float) -> bool:
        """Wait `seconds`; False as soon as it is clear the wait would pass the shutdown
        deadline (close() wakes the wait to check)."""
        end = self._clock() + seconds
        with self._cond:
            while True:
                if self._deadline is not None and end > self._deadline:
                    return False
                left = end - self._clock()
                if left <= 0:
                    return True
                self._cond.wait(left)

    def _count(
        self,
        outcome: str,
        message: T,
        severity: Severity,
        text: str,
        worker: bool = True,
        **fields: Any,
    ) -> None:
        with self._cond:
            if worker and self._abandoned:  # close() gave up on this one and counted it already
                return
            self.counts[outcome] += 1
        self._on_outcome(outcome)
        fields.update(self._describe(message))
        log(severity, text, component="connector", queue=self._name, **fields)
