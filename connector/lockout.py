"""Per-device lockout after repeated failed verifications, kept in the store so a restart does not
lift it: max_failures failures lock for lockout_base_s, each further failure doubles the wait up
to lockout_max_s, and a match clears everything."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from .config import PolicyConfig
from .store import LockoutState, Store


def lock_seconds(failures: int, policy: PolicyConfig) -> int:
    """How long `failures` consecutive failures lock a device (0 below the threshold)."""
    beyond = failures - policy.max_failures
    if beyond < 0:
        return 0
    return min(policy.lockout_base_s * 2 ** min(beyond, 32), policy.lockout_max_s)


class Lockout:
    def __init__(
        self, store: Store, policy: PolicyConfig, clock: Callable[[], float] = time.time
    ) -> None:
        self._store, self._policy, self._clock = store, policy, clock

    def check(self, serial: str) -> int:
        """Whole seconds until the device may try again; 0 when it may try now."""
        left = self._store.lockout_state(serial).locked_until - self._clock()
        if left <= 0:
            return 0
        # A clock set back must not stretch a lockout beyond its longest length.
        return min(math.ceil(left), self._policy.lockout_max_s)

    def record_failure(self, serial: str) -> int:
        """Count one failed verification; returns the lockout it starts (0 if none)."""
        now = self._clock()
        locked_for = 0

        def change(state: LockoutState) -> LockoutState:
            nonlocal locked_for
            failures = state.failures + 1
            locked_for = lock_seconds(failures, self._policy)
            until = max(state.locked_until, now + locked_for) if locked_for else state.locked_until
            return LockoutState(failures, until)

        self._store.update_lockout(serial, change)
        return locked_for

    def record_success(self, serial: str) -> None:
        if self._store.lockout_state(serial) != LockoutState():
            self._store.update_lockout(serial, lambda _: LockoutState())
