"""The rules of one login attempt (connector/verification.py) in memory: a real Store in a
temporary file, the in-memory camera, comparator and clock of connector/memory.py. What counts
towards the lockout and what does not, the lockout's schedule, one attempt per device at a time,
a clock set back, and a store that fails. tests/test_connector_api.py and
tests/test_connector_engine.py run the same attempt through the real processes."""

from __future__ import annotations

import pytest
from faceid_core.errors import (
    ComparisonIncomplete,
    DeviceError,
    EngineError,
    FaceError,
    InputError,
    ReferenceUnusable,
    config_error,
)

from connector.memory import MATCH, NO_MATCH, Verdict
from connector.verification import audit_fields, verify_event
from tests.support.memory_runtime import Rig, memory_rig


@pytest.fixture
def grace(rig) -> Rig:
    """A device with Grace enrolled (by an administrator)."""
    rig.admin_adds("Grace Hopper")
    return rig


def fail_now(rig: Rig) -> int | None:
    """One not_recognized attempt; the lockout it started (None if none)."""
    rig.function.script(NO_MATCH)
    outcome = rig.verify()
    assert outcome.code == "not_recognized", outcome
    return outcome.retry_after_s if outcome.lockout_started else None


def fail_when_allowed(rig: Rig) -> int | None:
    """A failure made as soon as the device may try again."""
    rig.clock.advance(rig.rt.lockout.check(rig.serial))
    return fail_now(rig)


# --- verdicts ------------------------------------------------------------------------------


def test_nobody_enrolled_is_not_enrolled_without_camera_or_comparison(rig):
    outcome = rig.verify()
    assert (outcome.verdict, outcome.code) == ("error", "not_enrolled")
    assert rig.camera.snapshots == [] and rig.function.calls == []
    assert rig.failures() == 0


def test_a_match_names_the_person_and_opens_their_session(grace):
    grace.function.script(MATCH)
    outcome = grace.verify()
    assert (outcome.verdict, outcome.code, outcome.person) == ("match", None, "Grace Hopper")
    assert outcome.message == "Welcome, Grace Hopper"
    assert grace.unlocked() and grace.failures() == 0
    assert grace.rt.last_match[grace.serial] == grace.clock()
    assert set(outcome.stages_ms) >= {"signin", "snapshot", "signout", "prepare", "function"}


def test_the_function_gets_opaque_ids_and_the_policy_threshold_never_a_name(tmp_path):
    rig = memory_rig(tmp_path, "threshold = 0.5")
    try:
        for person in ("Ada", "Grace"):
            rig.admin_adds(person)
        rig.function.script(Verdict("match", reference=1))
        outcome = rig.verify()
        (call,) = rig.function.calls
        assert call.ids == ("r0", "r1") and call.threshold == 0.5
        assert outcome.person in {"Ada", "Grace"}
        assert "Ada" not in repr(call) and "Grace" not in repr(call)
    finally:
        rig.close()


def test_the_probe_sent_is_the_downscaled_snapshot_and_kept_for_the_notice(grace):
    outcome = grace.verify()
    assert outcome.probe is not None and outcome.probe[:3] == b"\xff\xd8\xff"
    assert grace.function.calls[0].sizes[0] == len(outcome.probe)
    assert verify_event(grace.device, outcome, "t").snapshot == outcome.probe


def test_a_no_match_is_not_recognized_and_never_names_anyone(grace):
    outcome = grace.verify()
    assert (outcome.verdict, outcome.code, outcome.person) == (
        "no_match",
        "not_recognized",
        None,
    )
    assert audit_fields(outcome)["person"] is None


# --- what counts towards the lockout -------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (NO_MATCH, "not_recognized"),
        (ReferenceUnusable("r0"), "reference_unusable"),
        (ComparisonIncomplete("some did not match, the others failed"), "comparison_incomplete"),
    ],
    ids=["not_recognized", "reference_unusable", "comparison_incomplete"],
)
def test_a_face_compared_with_nothing_matching_counts_as_a_failure(grace, answer, code):
    grace.function.script(answer)
    assert grace.verify().code == code
    assert grace.failures() == 1


@pytest.mark.parametrize(
    "answer",
    [
        FaceError("no_face", "none"),
        FaceError("too_dark", "dark"),
        FaceError("face_too_small", "far"),
        InputError("invalid_image", "unreadable"),
        EngineError("engine_unavailable", "down"),
        EngineError("engine_busy", "rate limited", retry_after=7),
        config_error("threshold refused"),
    ],
    ids=lambda exc: exc.code,
)
def test_an_attempt_that_compared_no_face_gives_its_failure_back(grace, answer):
    grace.function.script(answer)
    outcome = grace.verify()
    assert (outcome.verdict, outcome.code) == ("error", answer.code)
    assert outcome.retry_after_s == answer.retry_after
    assert grace.failures() == 0


@pytest.mark.parametrize(
    "code", ["device_unreachable", "device_auth_failed", "device_tls_error", "snapshot_unavailable"]
)
def test_a_device_failure_is_its_code_and_no_failure(grace, code):
    grace.camera.error = DeviceError(code, "the device failed")
    outcome = grace.verify()
    assert (outcome.verdict, outcome.code) == ("error", code)
    assert grace.function.calls == [] and grace.failures() == 0


def test_a_snapshot_that_is_not_a_picture_is_snapshot_unavailable(grace):
    grace.camera.jpeg = b"<html>not a picture</html>"
    assert grace.verify().code == "snapshot_unavailable"
    assert grace.function.calls == []


def test_an_unforeseen_failure_is_internal_error_and_counts_as_a_failure(grace, capsys):
    class Broken(Exception):
        pass

    def broken(*_: object, **__: object) -> None:
        raise Broken

    grace.rt.function.verify = broken  # type: ignore[method-assign]
    outcome = grace.verify()
    assert (outcome.verdict, outcome.code) == ("error", "internal_error")
    assert grace.failures() == 1  # a bug never buys a free comparison
    assert "Broken" in capsys.readouterr().out


def test_a_failure_between_matches_ends_the_session(grace):
    grace.function.script(MATCH, FaceError("no_face", "none"))
    grace.verify()
    assert grace.unlocked()
    assert grace.verify().code == "no_face"
    assert not grace.unlocked()


# --- the lockout ---------------------------------------------------------------------------


def test_max_failures_lock_the_device_and_each_further_one_doubles_up_to_the_maximum(tmp_path):
    rig = memory_rig(tmp_path, "max_failures = 3\nlockout_base_s = 10\nlockout_max_s = 35")
    try:
        rig.admin_adds("Grace Hopper")
        assert [fail_when_allowed(rig) for _ in range(6)] == [None, None, 10, 20, 35, 35]
        assert len(rig.camera.snapshots) == len(rig.function.calls) == 6
    finally:
        rig.close()


def test_a_locked_out_device_is_told_how_long_and_neither_camera_nor_function_is_used(grace):
    for _ in range(5):
        fail_now(grace)
    grace.clock.advance(12.5)
    outcome = grace.verify()
    assert (outcome.verdict, outcome.code, outcome.retry_after_s) == ("error", "locked_out", 18)
    assert "18 seconds" in outcome.message and not outcome.lockout_started
    assert len(grace.camera.snapshots) == len(grace.function.calls) == 5


def test_a_neutral_attempt_after_four_failures_does_not_lock(grace):
    for _ in range(4):
        fail_now(grace)
    grace.function.script(FaceError("too_dark", "dark"))
    assert grace.verify().code == "too_dark"
    assert grace.rt.lockout.check(grace.serial) == 0
    assert fail_now(grace) == 30  # the fifth failure


def test_a_match_starts_the_count_again(grace):
    for _ in range(6):
        fail_when_allowed(grace)
    grace.clock.advance(grace.rt.lockout.check(grace.serial))
    grace.function.script(MATCH)
    assert grace.verify().verdict == "match"
    assert [fail_now(grace) for _ in range(5)] == [None, None, None, None, 30]


def test_a_lockout_is_per_device(grace):
    other = grace.devices[1]
    grace.admin_adds("Grace Hopper", other)
    for _ in range(5):
        fail_now(grace)
    grace.function.script(MATCH)
    assert grace.verify(other).verdict == "match"


# --- one attempt per device at a time ------------------------------------------------------


def test_another_attempt_while_one_holds_the_device_is_busy_and_not_counted(grace):
    during = []
    grace.camera.during = lambda access: during.append(grace.verify())
    grace.function.script(MATCH)
    outcome = grace.verify()
    assert [(o.verdict, o.code) for o in during] == [("error", "busy")]
    assert during[0].message.startswith("Someone is already logging in")
    assert outcome.verdict == "match"  # the attempt holding the device is unaffected
    assert grace.camera.snapshots == [grace.serial] and len(grace.function.calls) == 1
    assert grace.failures() == 0


def test_an_attempt_on_another_device_is_not_busy(grace):
    other = grace.devices[1]
    grace.admin_adds("Ada", other)
    during = []

    def attempt_on_the_other(access):
        if access.serial == grace.serial:  # not again in the other device's own snapshot
            during.append(grace.verify(other))

    grace.camera.during = attempt_on_the_other
    grace.function.script(MATCH, MATCH)
    grace.verify()
    assert [(o.verdict, o.person) for o in during] == [("match", "Ada")]


def test_an_attempt_whose_hold_outlived_its_lease_no_longer_blocks_the_device(grace):
    gate = grace.rt.lockout.begin(grace.serial, grace.rt.attempt_lease_s)  # then it dies
    assert gate.decision == "go"
    assert grace.verify().code == "busy"
    grace.clock.advance(grace.rt.attempt_lease_s + 0.1)
    grace.function.script(MATCH)
    assert grace.verify().verdict == "match"


# --- the clock -----------------------------------------------------------------------------


def test_a_clock_set_back_does_not_stretch_a_lockout_beyond_its_longest(grace):
    for _ in range(5):
        fail_now(grace)
    grace.clock.advance(-86400)  # an NTP step back by a day
    outcome = grace.verify()
    assert (outcome.code, outcome.retry_after_s) == ("locked_out", 900)
    grace.clock.advance(900 + 1)
    grace.function.script(MATCH)
    assert grace.verify().verdict == "match"


def test_a_clock_set_back_or_past_the_ttl_ends_the_unlocked_session(grace):
    grace.function.script(MATCH)
    grace.verify()
    grace.clock.advance(-60)
    assert not grace.unlocked()  # started "in the future": not trusted
    grace.clock.advance(60 + 599)
    assert grace.unlocked()
    grace.clock.advance(1)
    assert not grace.unlocked()  # policy.unlock_ttl_s = 600


# --- the store -----------------------------------------------------------------------------


def test_a_store_that_fails_after_a_match_answers_store_unavailable_not_match(grace):
    grace.function.script(MATCH)
    grace.camera.during = lambda access: grace.store.close()  # e.g. the disk fails meanwhile
    outcome = grace.verify()
    assert (outcome.verdict, outcome.code, outcome.person) == ("error", "store_unavailable", None)


def test_a_store_that_fails_before_the_attempt_contacts_nothing(grace):
    grace.store.close()
    assert grace.verify().code == "store_unavailable"
    assert grace.camera.snapshots == [] and grace.function.calls == []


# --- what the administrators learn ---------------------------------------------------------


def test_an_unusable_reference_names_its_person_for_the_administrators_only(grace):
    grace.function.script(ReferenceUnusable("r0"))
    outcome = grace.verify()
    assert (outcome.code, outcome.person, outcome.subject) == (
        "reference_unusable",
        None,
        "Grace Hopper",
    )
    assert audit_fields(outcome)["person"] == "Grace Hopper"
    event = verify_event(grace.device, outcome, "t")
    assert (event.outcome, event.code, event.person) == (
        "error",
        "reference_unusable",
        "Grace Hopper",
    )


def test_the_event_of_the_failure_that_locks_says_for_how_long(grace):
    for _ in range(4):
        fail_now(grace)
    grace.function.script(NO_MATCH)
    outcome = grace.verify()
    assert verify_event(grace.device, outcome, "t").lockout_s == 30
    assert verify_event(grace.device, grace.verify(), "t").lockout_s is None  # locked_out
