"""The connector's macro API when the comparison fails or refuses, end to end: the connector
process, the real function process with the MXFace engine, and a fake MXFace scripted per test
(REFERENCE §3). Every failure is a signed `error` answer, never a match. What counts towards the
lockout, and the lockout itself, are tests/test_verification_unit.py's (in memory)."""

from __future__ import annotations

import pytest

from devkit.connector_e2e import (
    assert_error,
    enroll,
    open_sessions,
    status,
    verify,
)
from devkit.fakes.mxface import (
    DETECT_PATH,
    VERIFY_PATH,
    Reply,
    match,
    no_face_200,
    rate_limited,
    slow,
    unauthorized,
)
from devkit.photos import write_frames
from devkit.stack import start_stack

pytestmark = pytest.mark.slow  # starts real processes

CONNECTOR_TIMEOUT_S = 2.0
PERSON = "Grace Hopper"


@pytest.fixture(scope="module")
def stack(fake, tmp_path_factory):
    frames = write_frames(tmp_path_factory.mktemp("frames"))
    stack = start_stack(
        tmp_path_factory.mktemp("stack"),
        images=frames["grace_hopper"],
        devices=1,
        function_env={
            "FACE_ENGINE": "mxface",
            "MXFACE_API_URL": fake.verify_url,
            "MXFACE_KEY": fake.key,
        },
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
