"""What the console holds for a moment, in memory only, never in the store or on disk: a camera
snapshot waiting for "keep" (it shows whoever is in the room), a device check's result, and the
notices a page shows once after an action (post, redirect, get). Bounded in number and in age.
One gunicorn worker serves every request (server.py), so one dict holds them all; a restart
forgets them, which costs an administrator one click."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Expiring(Generic[T]):
    """A dict whose entries last `ttl_s` and of which at most `max_items` are kept (the oldest
    go first), at most `per_group` of any one group (its own oldest go first: one session
    cannot push everyone else's out). Keys are random tokens unless given."""

    def __init__(
        self,
        ttl_s: float,
        max_items: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        per_group: int | None = None,
    ) -> None:
        self._ttl_s, self._max_items, self._clock = ttl_s, max_items, clock
        self._per_group = per_group
        self._items: OrderedDict[str, tuple[float, str | None, T]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, value: T, key: str | None = None, *, group: str | None = None) -> str:
        """Keep `value` under `key` (a new random token when None), replacing what was there."""
        key = secrets.token_urlsafe(24) if key is None else key
        with self._lock:
            self._drop_expired()
            self._items.pop(key, None)
            if group is not None and self._per_group is not None:
                mates = [k for k, (_, owner, _) in self._items.items() if owner == group]
                for oldest in mates[: max(0, len(mates) - self._per_group + 1)]:
                    del self._items[oldest]
            self._items[key] = (self._clock() + self._ttl_s, group, value)
            while len(self._items) > self._max_items:
                self._items.popitem(last=False)
        return key

    def get(self, key: str) -> T | None:
        with self._lock:
            self._drop_expired()
            held = self._items.get(key)
        return None if held is None else held[2]

    def pop(self, key: str, only_if: Callable[[T], bool] | None = None) -> T | None:
        """Take the entry out, if `only_if` holds for it: of two callers, one gets it."""
        with self._lock:
            self._drop_expired()
            held = self._items.get(key)
            if held is None or (only_if is not None and not only_if(held[2])):
                return None
            del self._items[key]
        return held[2]

    def _drop_expired(self) -> None:
        now = self._clock()
        while self._items:
            key, (until, _, _) = next(iter(self._items.items()))
            if until > now:
                return  # entries are in the order they expire: all share one ttl
            del self._items[key]
