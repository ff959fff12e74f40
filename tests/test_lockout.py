"""The lockout schedule (docs/api.md §2): 5 failures lock for 30 s, each further one doubles the
wait up to 15 min, a match clears it, and a restart does not. And the attempt gate it rides on:
one attempt per device at a time, counted as a failure from its start, so that no race or crash
gets more comparisons than the schedule allows."""

from __future__ import annotations

import threading

import pytest

from connector.config import PolicyConfig
from connector.lockout import Lockout
from connector.store import Gate

SERIAL = "FOC1234X5YZ"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def lockout(store, clock):
    return Lockout(store, PolicyConfig(), clock)


LEASE_S = 20.0


def attempt(lockout: Lockout, result: str, person: str | None = None) -> int:
    """One attempt that the gate lets through, settled as `result`; the lockout it started."""
    gate = lockout.begin(SERIAL, LEASE_S)
    assert gate.decision == "go"
    return lockout.finish(SERIAL, gate, result, person)


def fail(lockout: Lockout) -> int:
    return attempt(lockout, "failure")


def fail_after_waiting(lockout: Lockout, clock: Clock) -> int:
    """A failure made as soon as the device may try again."""
    clock.now += lockout.check(SERIAL)
    assert lockout.check(SERIAL) == 0
    return fail(lockout)


def test_the_schedule_doubles_from_30_s_up_to_15_min(lockout, clock):
    waits = [fail_after_waiting(lockout, clock) for _ in range(12)]
    assert waits == [0, 0, 0, 0, 30, 60, 120, 240, 480, 900, 900, 900]


def test_check_counts_the_lockout_down(lockout, clock):
    for _ in range(5):
        fail(lockout)
    assert lockout.check(SERIAL) == 30
    clock.now += 12.5
    assert lockout.check(SERIAL) == 18  # rounded up: never lets a device in early
    clock.now += 17.5
    assert lockout.check(SERIAL) == 0
    assert lockout.check("ANOTHER") == 0


def test_a_match_starts_the_count_again(lockout, clock):
    for _ in range(6):
        fail_after_waiting(lockout, clock)
    clock.now += lockout.check(SERIAL)
    attempt(lockout, "match", "Alice")
    assert lockout.check(SERIAL) == 0
    assert [fail_after_waiting(lockout, clock) for _ in range(5)] == [0, 0, 0, 0, 30]


def test_a_restart_keeps_the_lockout(store_backend, key, clock):
    store = store_backend.open(key)
    for _ in range(6):
        fail_after_waiting(Lockout(store, PolicyConfig(), clock), clock)
    store.close()

    reopened = store_backend.open(key)
    try:
        lockout = Lockout(reopened, PolicyConfig(), clock)
        assert lockout.check(SERIAL) == 60
        assert fail_after_waiting(lockout, clock) == 120
    finally:
        reopened.close()


def begin_at_once(lockout: Lockout | list[Lockout], count: int) -> tuple[list[str], Gate]:
    """`count` attempts begun at once (spread over the connectors when given several): their
    decisions, sorted, and the gate of the one that went."""
    lockouts = lockout if isinstance(lockout, list) else [lockout]
    start = threading.Barrier(count)
    gates: list[Gate] = []

    def work(lockout: Lockout) -> None:
        start.wait()
        gates.append(lockout.begin(SERIAL, LEASE_S))

    threads = [
        threading.Thread(target=work, args=(lockouts[i % len(lockouts)],)) for i in range(count)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    went = [g for g in gates if g.decision == "go"]
    assert len(went) == 1, [g.decision for g in gates]
    return sorted(g.decision for g in gates), went[0]


def test_of_simultaneous_attempts_one_goes_and_the_others_are_busy(lockout):
    decisions, gate = begin_at_once(lockout, 30)
    assert decisions == ["busy"] * 29 + ["go"]
    assert lockout.finish(SERIAL, gate, "neutral") == 0
    assert lockout.begin(SERIAL, LEASE_S).decision == "go"  # the device is free again


def test_after_four_failures_thirty_at_once_give_one_comparison_then_a_lockout(lockout, store):
    for _ in range(4):
        fail(lockout)
    # The one that goes is counted from its start: the others find the device locked out.
    decisions, gate = begin_at_once(lockout, 30)
    assert decisions == ["go"] + ["locked_out"] * 29
    assert store.lockout_state(SERIAL).failures == 5 and lockout.check(SERIAL) == 30
    assert lockout.finish(SERIAL, gate, "failure") == 30
    assert lockout.begin(SERIAL, LEASE_S).decision == "locked_out"


def test_two_connectors_sharing_the_store_lock_out_exactly_as_one(store, store_backend, key, clock):
    other = store_backend.open(key)  # a second connector: its own connections to the same store
    try:
        pair = [Lockout(store, PolicyConfig(), clock), Lockout(other, PolicyConfig(), clock)]
        for i in range(4):
            fail(pair[i % 2])  # failures spread over both
        decisions, gate = begin_at_once(pair, 30)
        assert decisions == ["go"] + ["locked_out"] * 29
        assert pair[1].finish(SERIAL, gate, "failure") == 30  # settled by the other one
        assert [lockout.check(SERIAL) for lockout in pair] == [30, 30]
        assert other.lockout_state(SERIAL).failures == 5
    finally:
        other.close()


def test_an_attempt_that_compared_nothing_gives_its_reserved_failure_back(lockout, store):
    for _ in range(4):
        fail(lockout)
    gate = lockout.begin(SERIAL, LEASE_S)
    assert gate.decision == "go"
    assert lockout.check(SERIAL) == 30  # reserved: locked out while it runs
    assert lockout.finish(SERIAL, gate, "neutral") == 0  # e.g. no face in view
    assert store.lockout_state(SERIAL).failures == 4 and lockout.check(SERIAL) == 0
    assert fail(lockout) == 30


def test_an_attempt_whose_connector_died_counts_as_a_failure_and_frees_the_device(
    lockout, store, clock
):
    for _ in range(3):
        fail(lockout)
    assert lockout.begin(SERIAL, LEASE_S).decision == "go"  # ... and the process is killed
    assert Lockout(store, PolicyConfig(), clock).begin(SERIAL, LEASE_S).decision == "busy"
    clock.now += LEASE_S + 0.1
    assert fail(lockout) == 30  # the dead attempt's failure stands: this is the fifth
    assert store.lockout_state(SERIAL).failures == 5


def test_a_match_opens_a_session_and_any_other_outcome_ends_it(lockout, store, clock):
    attempt(lockout, "match", "Alice")
    session = store.unlocked_session(SERIAL, 600, now=clock.now)
    assert session is not None and session.person == "Alice"
    for result in ("neutral", "failure"):
        attempt(lockout, "match", "Alice")
        attempt(lockout, result)
        assert store.unlocked_session(SERIAL, 600, now=clock.now) is None


def test_an_attempt_that_outlived_its_lease_keeps_its_failure_and_the_newer_hold(
    lockout, store, clock
):
    slow = lockout.begin(SERIAL, LEASE_S)
    clock.now += LEASE_S + 0.1  # it is still running when its lease ends
    newer = lockout.begin(SERIAL, LEASE_S)
    assert newer.decision == "go" and store.lockout_state(SERIAL).failures == 2
    assert lockout.finish(SERIAL, slow, "neutral") == 0  # no refund: its hold was lost
    assert store.lockout_state(SERIAL).failures == 2
    assert lockout.begin(SERIAL, LEASE_S).decision == "busy"  # the newer one still holds
    lockout.finish(SERIAL, newer, "neutral")
    assert store.lockout_state(SERIAL).failures == 1


def test_a_clock_set_back_neither_stretches_a_lockout_nor_a_lease(lockout, store, clock):
    for _ in range(4):
        fail(lockout)
    assert lockout.begin(SERIAL, LEASE_S).decision == "go"  # holds the device, then dies
    clock.now -= 86400
    assert lockout.check(SERIAL) == 900
    assert lockout.begin(SERIAL, LEASE_S).decision == "locked_out"  # brought back to 900 s
    clock.now += 900 + 1
    assert lockout.begin(SERIAL, LEASE_S).decision == "go"  # neither locked out nor busy


def test_a_clock_set_back_does_not_stretch_a_lockout(lockout, clock):
    for _ in range(5):
        fail(lockout)
    clock.now -= 86400
    assert lockout.check(SERIAL) == 900


def test_the_policy_values_are_honoured(store, clock):
    policy = PolicyConfig(max_failures=2, lockout_base_s=10, lockout_max_s=25)
    lockout = Lockout(store, policy, clock)
    assert [fail_after_waiting(lockout, clock) for _ in range(5)] == [0, 10, 20, 25, 25]
