"""Per-device lockout after repeated failed verifications, kept in the store so a restart does not
lift it: max_failures failures lock for lockout_base_s, each further failure doubles the wait up
to lockout_max_s, and a match clears everything. Decided in the store's transactions before the
device is contacted, so concurrent or crashed attempts can never add comparisons."""

from __future__ import annotations

import math
import time

from .config import PolicyConfig
from .ports import Clock
from .store import AuditEntry, Gate, LockoutState, Settlement, Store


def lock_seconds(failures: int, policy: PolicyConfig) -> int:
    """How long `failures` consecutive failures lock a device (0 below the threshold)."""
    beyond = failures - policy.max_failures
    if beyond < 0:
        return 0
    return min(policy.lockout_base_s * 2 ** min(beyond, 32), policy.lockout_max_s)


class Lockout:
    """The lockout rule over the store's attempt gate: each verify is counted as a failure when it
    begins and settled when it ends (see Store.begin_attempt)."""

    def __init__(self, store: Store, policy: PolicyConfig, clock: Clock = time.time) -> None:
        self._store, self._policy, self._clock = store, policy, clock

    def check(self, serial: str) -> int:
        """Whole seconds until the device may try again; 0 when it may try now."""
        return self.remaining(self._store.lockout_state(serial))

    def remaining(self, state: LockoutState) -> int:
        left = state.locked_until - self._clock()
        if left <= 0:
            return 0
        # A clock set back must not stretch a lockout beyond its longest length.
        return min(math.ceil(left), self._policy.lockout_max_s)

    def end(self, serial: str, *, audit: AuditEntry | None = None) -> str:
        """End the device's lockout and forget its failed attempts (`admin unlock-lockout`, the
        console's "end lockout"), writing `audit` with it; returns what that changed, in words.
        Either way the device may try again now."""
        ended = self._store.clear_lockout(serial, audit=audit)
        left = self.remaining(ended)
        if left:
            return f"Lockout of {serial} ended (it had {ended.failures} failures, {left} s left)."
        if ended.failures:
            forgotten = f"its {ended.failures} failed attempts are forgotten"
            return f"{serial} was not locked out; {forgotten}."
        return f"{serial} was not locked out."

    def begin(self, serial: str, lease_s: float) -> Gate:
        """May a verify run now? "go" holds the device for at most lease_s, reserving a failure."""
        now = self._clock()

        def failed(state: LockoutState) -> LockoutState:
            failures = state.failures + 1
            locked_for = lock_seconds(failures, self._policy)
            until = max(state.locked_until, now + locked_for) if locked_for else state.locked_until
            return LockoutState(failures, until)

        return self._store.begin_attempt(
            serial, failed, lease_s=lease_s, max_wait_s=self._policy.lockout_max_s, now=now
        )

    def finish(self, serial: str, gate: Gate, result: Settlement, person: str | None = None) -> int:
        """Settle the attempt `gate` let go ("match", "failure" or "neutral"); returns the
        lockout a failure started, in seconds (0 if none)."""
        assert gate.token is not None
        state = self._store.finish_attempt(
            serial, gate.token, result, person=person, now=self._clock()
        )
        return lock_seconds(state.failures, self._policy) if result == "failure" else 0
