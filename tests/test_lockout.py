"""The lockout schedule (docs/api.md §2): 5 failures lock for 30 s, each further one doubles the
wait up to 15 min, a match clears it, and a restart does not."""

from __future__ import annotations

import os
import threading

import pytest

from connector.config import PolicyConfig
from connector.lockout import Lockout
from connector.store import Store

SERIAL = "FOC1234X5YZ"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def key():
    return os.urandom(32)


@pytest.fixture
def store(tmp_path, key):
    s = Store.open(tmp_path / "faceid.db", key)
    yield s
    s.close()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def lockout(store, clock):
    return Lockout(store, PolicyConfig(), clock)


def fail_after_waiting(lockout: Lockout, clock: Clock) -> int:
    """A failure made as soon as the device may try again."""
    clock.now += lockout.check(SERIAL)
    assert lockout.check(SERIAL) == 0
    return lockout.record_failure(SERIAL)


def test_the_schedule_doubles_from_30_s_up_to_15_min(lockout, clock):
    waits = [fail_after_waiting(lockout, clock) for _ in range(12)]
    assert waits == [0, 0, 0, 0, 30, 60, 120, 240, 480, 900, 900, 900]


def test_check_counts_the_lockout_down(lockout, clock):
    for _ in range(5):
        lockout.record_failure(SERIAL)
    assert lockout.check(SERIAL) == 30
    clock.now += 12.5
    assert lockout.check(SERIAL) == 18  # rounded up: never lets a device in early
    clock.now += 17.5
    assert lockout.check(SERIAL) == 0
    assert lockout.check("ANOTHER") == 0


def test_a_match_starts_the_count_again(lockout, clock):
    for _ in range(6):
        fail_after_waiting(lockout, clock)
    lockout.record_success(SERIAL)
    assert lockout.check(SERIAL) == 0
    assert [fail_after_waiting(lockout, clock) for _ in range(5)] == [0, 0, 0, 0, 30]


def test_a_restart_keeps_the_lockout(tmp_path, key, clock):
    store = Store.open(tmp_path / "faceid.db", key)
    for _ in range(6):
        fail_after_waiting(Lockout(store, PolicyConfig(), clock), clock)
    store.close()

    reopened = Store.open(tmp_path / "faceid.db", key)
    try:
        lockout = Lockout(reopened, PolicyConfig(), clock)
        assert lockout.check(SERIAL) == 60
        assert fail_after_waiting(lockout, clock) == 120
    finally:
        reopened.close()


def test_simultaneous_failures_all_count(lockout, store):
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        lockout.record_failure(SERIAL)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.lockout_state(SERIAL).failures == 8
    assert lockout.check(SERIAL) == 240


def test_a_clock_set_back_does_not_stretch_a_lockout(lockout, clock):
    for _ in range(5):
        lockout.record_failure(SERIAL)
    clock.now -= 86400
    assert lockout.check(SERIAL) == 900


def test_the_policy_values_are_honoured(store, clock):
    policy = PolicyConfig(max_failures=2, lockout_base_s=10, lockout_max_s=25)
    lockout = Lockout(store, policy, clock)
    assert [fail_after_waiting(lockout, clock) for _ in range(5)] == [0, 10, 20, 25, 25]
