"""The connector's macro API when the comparison fails or refuses, and its lockout, end to end: the
connector process, the real function process with the MXFace engine, and a fake MXFace scripted
per test (REFERENCE §3). Every failure is a signed `error` answer, never a match."""

from __future__ import annotations

import pytest

from demo.photos import write_frames
from demo.stack import start_stack
from tests.connector_e2e import (
    assert_error,
    enroll,
    open_sessions,
    sim_stats,
    status,
    verify,
)
from tests.fakes.mxface import (
    DETECT_PATH,
    VERIFY_PATH,
    Reply,
    match,
    no_face_200,
    no_match,
    rate_limited,
    slow,
    unauthorized,
)

CONNECTOR_TIMEOUT_S = 2.0
PERSON = "Grace Hopper"


@pytest.fixture(scope="module")
def stack(fake, tmp_path_factory):
    frames = write_frames(tmp_path_factory.mktemp("frames"))
    stack = start_stack(
        tmp_path_factory.mktemp("stack"),
        images=frames["grace_hopper"],
        devices=3,
        function_env={"FACE_ENGINE": "mxface", "MXFACE_API_URL": fake.url, "MXFACE_KEY": fake.key},
        function_timeout_s=CONNECTOR_TIMEOUT_S,
    )
    try:
        for device in stack.devices:
            assert enroll(stack, device, PERSON)["result"] == "enrolled"
        yield stack
    finally:
        stack.stop()


@pytest.fixture(autouse=True)
def mx(fake, stack):
    """The fake starts every test unscripted, and no test leaves a device session open."""
    fake.reset()
    yield fake
    assert open_sessions(stack.devices) == {}


def function_requests(stack) -> int:
    """The function logs one line per request it answers."""
    return len(stack.function.stdout().splitlines())


def always(reply: Reply):
    return lambda image1, image2: reply


def test_a_comparison_that_says_match_unlocks(stack, mx):
    mx.verify_rule = always(match(91.0))
    answered = function_requests(stack)
    answer = verify(stack, stack.devices[0])
    assert (answer["verdict"], answer["person"]) == ("match", PERSON)
    assert [r.path for r in mx.requests] == [VERIFY_PATH]  # one reference, one comparison
    assert function_requests(stack) == answered + 1


@pytest.mark.parametrize(
    "reply",
    [
        Reply(500, {"code": 500, "message": "An error occurred"}),
        Reply(200, b"<html>Service Unavailable</html>"),
        Reply(200, {"matchedFaces": [{"matchResult": "yes", "confidence": "high"}]}),
        unauthorized(),
    ],
    ids=["mxface_500", "garbage", "malformed_verdict", "function_500_config_error"],
)
def test_a_failed_comparison_is_engine_unavailable(stack, mx, reply):
    mx.enqueue(*[reply] * 4)  # the function retries a 5xx; every attempt fails
    assert_error(verify(stack, stack.devices[0]), "engine_unavailable")


def test_a_comparison_slower_than_the_connector_timeout_is_engine_unavailable(stack, mx):
    mx.enqueue(slow(match(), CONNECTOR_TIMEOUT_S + 1.0))
    answer = verify(stack, stack.devices[0])
    assert_error(answer, "engine_unavailable")


def test_a_rate_limited_comparison_is_engine_busy_with_a_wait(stack, mx):
    mx.enqueue(rate_limited("30"))  # longer than the function's deadline: it gives up at once
    answer = verify(stack, stack.devices[0])
    assert_error(answer, "engine_busy")
    assert answer["retry_after_s"] == 30
    assert "30 seconds" in answer["message"]


def test_no_face_found_by_the_engine_is_no_face(stack, mx):
    mx.enqueue(no_face_200())
    assert_error(verify(stack, stack.devices[0]), "no_face")


def test_engine_failures_do_not_count_towards_the_lockout(stack, mx):
    device = stack.devices[0]
    mx.enqueue(*[Reply(200, b"not json")] * 7)
    for _ in range(7):
        assert_error(verify(stack, device), "engine_unavailable")
    assert status(stack, device)["locked_out_for_s"] == 0


def test_five_failures_lock_the_device_out_without_contacting_device_or_function(stack, mx):
    device = stack.devices[1]
    mx.verify_rule = always(no_match(12.0))
    answers = [verify(stack, device) for _ in range(5)]
    assert [a["code"] for a in answers] == ["not_recognized"] * 5
    assert [a["retry_after_s"] for a in answers] == [None] * 4 + [30]

    before = (sim_stats(device)["signin_attempts"], function_requests(stack), mx.count())
    answer = verify(stack, device)
    assert_error(answer, "locked_out")
    assert answer["retry_after_s"] == 30
    assert "30 seconds" in answer["message"]
    assert (sim_stats(device)["signin_attempts"], function_requests(stack), mx.count()) == before
    assert 29 <= status(stack, device)["locked_out_for_s"] <= 30

    mx.verify_rule = always(match())  # even the right face waits out the lockout
    assert_error(verify(stack, device), "locked_out")


def test_a_match_resets_the_failure_count(stack, mx):
    device = stack.devices[2]
    mx.verify_rule = always(no_match())
    assert [verify(stack, device)["code"] for _ in range(4)] == ["not_recognized"] * 4
    mx.verify_rule = always(match())
    assert verify(stack, device)["verdict"] == "match"
    mx.verify_rule = always(no_match())
    answers = [verify(stack, device) for _ in range(4)]
    assert [(a["code"], a["retry_after_s"]) for a in answers] == [("not_recognized", None)] * 4
    assert status(stack, device)["locked_out_for_s"] == 0


def test_enrollment_goes_through_the_engine_face_detection(stack, mx):
    device = stack.devices[0]
    mx.enqueue(Reply(200, {"faces": []}), path=DETECT_PATH)
    mx.verify_rule = always(match())
    assert verify(stack, device)["verdict"] == "match"  # the owner may update their photo
    refused = enroll(stack, device, PERSON)
    assert (refused["result"], refused["code"]) == ("refused", "no_face")
    assert status(stack, device)["enrolled_people"] == 1
    mx.verify_rule = always(match())
    assert enroll(stack, device, PERSON)["result"] == "enrolled"  # their own face: kept
    assert status(stack, device)["enrolled_people"] == 1


def test_a_stopped_function_is_engine_unavailable(stack, mx):
    """Last: the function does not come back."""
    stack.function.stop()
    assert_error(verify(stack, stack.devices[0]), "engine_unavailable")
