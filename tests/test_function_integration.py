"""The real `functions-framework` process with FACE_ENGINE=mxface, its key in the fake Secret
Manager, talking to the fake MXFace: every failure case ends in its status and code and never in
a match, and the process's output holds structured logs without keys or images."""

from __future__ import annotations

import json
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from faceid_core.errors import FaceIdError
from faceid_core.secrets import FAILED_READ_KEPT_S

from connector.config import FunctionConfig
from connector.relay import FunctionClient
from devkit.fakes.mxface import (
    DETECT_PATH,
    VERIFY_PATH,
    FakeMXFace,
    Reply,
    compared,
    detected,
    empty_matches,
    invalid_base64,
    invalid_request,
    match,
    no_face_200,
    rate_limited,
    server_error,
    slow,
    unauthorized,
)
from devkit.fakes.secret_manager import FakeSecretManager
from devkit.procs import start_function
from devkit.samples import astronaut_jpeg, b64, grace_hopper_jpeg, verify_request

pytestmark = pytest.mark.slow

PROJECT = "test-project"
SECRET = f"projects/{PROJECT}/secrets/mxface-key"
ALICE = grace_hopper_jpeg()
PROBE = astronaut_jpeg()
SAME = verify_request(ALICE, {"alice": ALICE})
OTHER = verify_request(PROBE, {"alice": ALICE})
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
KEYS: list[str] = []  # every key handed out during the run: none may reach the output


@pytest.fixture(scope="module")
def fakes():
    with FakeMXFace() as mx, FakeSecretManager() as sm:
        KEYS.append(mx.key)
        sm.add_version(SECRET, mx.key)
        yield mx, sm


@pytest.fixture(scope="module")
def function(fakes):
    mx, sm = fakes
    env = {
        "FACE_ENGINE": "mxface",
        "MXFACE_API_URL": mx.verify_url,
        "MXFACE_KEY": None,
        "MXFACE_KEY_SECRET": f"{SECRET}/versions/latest",
        "SECRET_MANAGER_EMULATOR_HOST": sm.address,
        "UPSTREAM_TIMEOUT_S": "1.5",
        "GOOGLE_CLOUD_PROJECT": PROJECT,
    }
    with start_function("verify_faces", "function/main.py", env) as server:
        yield server


@pytest.fixture
def mx(fakes, function):
    fakes[0].reset()
    return fakes[0]


@pytest.fixture
def sm(fakes):
    fakes[1].delay_s = 0.0
    return fakes[1]


@pytest.fixture(scope="module")
def http():
    with requests.Session() as session:
        session.trust_env = False
        session.headers["Connection"] = "close"  # no kept-alive connection to lose by chance
        yield session


@pytest.fixture
def post(function, http):
    def send(body, path="/", **kwargs):
        return http.post(function.url + path, json=body, timeout=10, **kwargs)

    return send


def assert_refused(response, status, code):
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert "verdict" not in response.json() and "matched_id" not in response.json()


def test_same_face_matches_and_other_face_does_not(post, mx):
    trace = {"X-Cloud-Trace-Context": f"{TRACE}/1;o=1"}
    body = post(SAME, headers=trace).json()
    assert (body["verdict"], body["matched_id"], body["engine"]) == ("match", "alice", "mxface")
    assert post(OTHER).json()["verdict"] == "no_match"


def test_the_connector_fails_closed_on_a_threshold_under_the_floor(function, mx):
    """policy.threshold = 30 passes the connector's own check (above 0); this function's engine
    refuses it (400), and the connector's client turns that into config_error, never a verdict."""
    client = FunctionClient(FunctionConfig(url=function.url, auth="none", audience=function.url))
    try:
        with pytest.raises(FaceIdError) as refused:
            client.verify(ALICE, [("r0", ALICE)], threshold=30)
        floor = "'threshold' must be at least 60, the mxface engine's floor"
        assert refused.value.code == "config_error"
        assert f"refused policy.threshold = 30: {floor}" in refused.value.message
        assert mx.count() == 0
        assert client.verify(ALICE, [("r0", ALICE)], threshold=60).verdict == "match"
    finally:
        client.close()


def test_several_faces_in_the_probe(post, mx):
    mx.enqueue(compared((0, 30.0), (1, 84.0), (0, 12.0)))
    body = post(OTHER).json()
    assert (body["verdict"], body["faces_in_probe"], body["score"]) == ("match", 3, 84.0)


@pytest.mark.parametrize(
    ("replies", "status", "code", "calls"),
    [
        ([invalid_request()], 502, "upstream_error", {1}),
        ([invalid_base64()], 502, "upstream_error", {1}),
        # No face in any pair: face/detect on the probe (which finds none) decides.
        ([no_face_200()], 422, "no_face", {2}),
        ([empty_matches()], 422, "no_face", {2}),
        ([Reply(200, {**compared((1, 99.0)).body, "code": 400})], 502, "upstream_error", {1}),
        # Jittered backoff inside the 1.5 s budget leaves room for the third or the fourth try.
        ([server_error()] * 8, 502, "upstream_error", {3, 4}),
        ([rate_limited()] * 8, 429, "rate_limited", None),  # as many as the deadline allows
        ([slow(match(), 3.0)], 504, "upstream_timeout", {1}),
    ],
)
def test_mxface_failures_are_errors_never_matches(post, mx, replies, status, code, calls):
    mx.enqueue(*replies)
    response = post(SAME)
    assert_refused(response, status, code)
    if code == "rate_limited":
        assert int(response.headers["Retry-After"]) >= 1
    assert calls is None or mx.count() in calls


def test_a_smaller_matching_face_beside_the_person_in_front_is_no_match(post, mx):
    mx.enqueue(compared((0, 30.0, 160), (1, 95.0, 60)))
    body = post(OTHER).json()
    assert (body["verdict"], body["matched_id"], body["faces_in_probe"]) == ("no_match", None, 2)


def test_a_reference_without_a_face_is_named_when_the_probe_has_one(post, mx):
    mx.enqueue(no_face_200())
    mx.enqueue(detected(), path=DETECT_PATH)
    response = post(OTHER)
    assert_refused(response, 422, "reference_unusable")
    assert response.json()["error"]["reference_id"] == "alice"
    assert [r.path for r in mx.requests] == [VERIFY_PATH, DETECT_PATH]


@pytest.mark.parametrize("first", [rate_limited(), server_error()])
def test_a_passing_failure_is_retried_then_answered(post, mx, first):
    mx.enqueue(first, match())
    assert post(SAME).json()["verdict"] == "match"
    assert mx.count() == 2


def test_mxface_body_cap_is_too_large(post, mx, monkeypatch):
    monkeypatch.setattr(mx, "max_body_bytes", 100_000)
    assert_refused(post(OTHER), 413, "too_large")


def test_request_over_10_mib_without_content_length_is_too_large(function, http):
    blob = b'{"probe": "' + b"A" * (10 * 1024 * 1024) + b'"}'

    def chunks():
        for start in range(0, len(blob), 1 << 20):
            yield blob[start : start + (1 << 20)]

    response = http.post(function.url, data=chunks(), timeout=30)  # sent chunked
    assert_refused(response, 413, "too_large")


@pytest.mark.parametrize("wrapped", [False, True])
def test_inspect_through_face_detect(post, mx, wrapped):
    mx.detect_reply = detected([(5, 6, 70, 80)], wrapped=wrapped)
    body = post({"image": b64(ALICE)}, path="/inspect").json()
    assert body == {"faces": [{"box": [5, 6, 70, 80], "quality": 0.9}], "engine": "mxface"}
    assert mx.requests[-1].path == DETECT_PATH


# -- Secret Manager ----------------------------------------------------------------------------


def forget_key(post, mx):
    """Make the function drop its cached key: MXFace rejects it once (a 401)."""
    mx.enqueue(unauthorized())
    assert_refused(post(SAME), 500, "config_error")
    mx.reset()


@pytest.mark.parametrize(
    ("break_it", "repair", "phrase"),
    [
        (lambda sm: sm.delete_secret(SECRET), None, "was not found"),
        (lambda sm: sm.deny(SECRET), lambda sm: sm.deny(SECRET, False), "permission denied"),
        (
            lambda sm: sm.set_state(f"{SECRET}/versions/1", "DISABLED"),
            lambda sm: sm.set_state(f"{SECRET}/versions/1", "ENABLED"),
            "disabled or destroyed",
        ),
        (
            lambda sm: sm.corrupt(f"{SECRET}/versions/1"),
            lambda sm: sm.corrupt(f"{SECRET}/versions/1", False),
            "CRC32C",
        ),
    ],
)
def test_secret_manager_failures_are_config_errors(post, mx, sm, break_it, repair, phrase):
    forget_key(post, mx)
    break_it(sm)
    try:
        response = post(SAME)
        assert_refused(response, 500, "config_error")
        assert phrase in response.json()["error"]["message"]
        assert SECRET in response.json()["error"]["message"]
        assert mx.count() == 0
    finally:
        if repair is None:
            sm.add_version(SECRET, mx.key)
        else:
            repair(sm)
    time.sleep(FAILED_READ_KEPT_S + 0.5)  # the function answers its failed read again meanwhile
    assert post(SAME).json()["verdict"] == "match"  # repaired: read again, works


def test_concurrent_requests_after_a_drop_read_the_secret_once(post, mx, sm):
    forget_key(post, mx)
    before = sm.access_count()
    sm.delay_s = 0.3
    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda _: post(SAME).status_code, range(6)))
    assert statuses == [200] * 6
    assert sm.access_count() == before + 1


def test_rotated_secret_is_picked_up_after_one_refusal(post, mx, sm, monkeypatch):
    assert post(SAME).json()["verdict"] == "match"
    new_key = secrets.token_urlsafe(24)
    KEYS.append(new_key)
    sm.add_version(SECRET, new_key)
    monkeypatch.setattr(mx, "key", new_key)
    assert_refused(post(SAME), 500, "config_error")
    assert post(SAME).json()["verdict"] == "match"
    assert mx.requests[-1].headers["subscriptionkey"] == new_key


# -- readiness -------------------------------------------------------------------------------------


def test_the_connectors_check_reads_the_functions_readiness_and_logs_no_warning(
    function, post, mx, sm
):
    """GET /ready through the connector's own client: ready, then failing with the function's
    reason while the secret cannot be read (MXFace is never asked), then ready again; the
    function logs its ready answers at DEBUG and its failing one as one ERROR."""
    check = FunctionClient(FunctionConfig(url=function.url, auth="none", audience=function.url))
    printed = len(function.stdout())
    assert check.reachable() is None
    forget_key(post, mx)
    sm.deny(SECRET)
    try:
        reason = check.reachable()
    finally:
        sm.deny(SECRET, False)
    assert (
        reason == f"failing: permission denied reading MXFACE_KEY_SECRET {SECRET}/versions/latest"
    )
    assert mx.count() == 0
    time.sleep(FAILED_READ_KEPT_S + 0.5)  # the function answers its failed read again meanwhile
    assert check.reachable() is None
    check.close()
    lines = [json.loads(line) for line in function.stdout()[printed:].splitlines() if line]
    ready = [(r["severity"], r["status"]) for r in lines if r.get("action") == "ready"]
    assert ready == [("DEBUG", 200), ("ERROR", 503), ("DEBUG", 200)]


# -- start-up --------------------------------------------------------------------------------------


def test_bad_settings_stop_start_up_naming_every_one():
    """functions-framework imports main.py before it serves: two bad variables end the process
    (status 1) with one message naming both, no traceback, and no server ever answers."""
    key = secrets.token_urlsafe(24)
    KEYS.append(key)
    env = {"FACE_ENGINE": "magic", "MXFACE_MIN_CONFIDENCE": "0", "MXFACE_KEY": key}
    with pytest.raises(RuntimeError) as failed:
        start_function("verify_faces", "function/main.py", env, timeout_s=60)
    output = str(failed.value)
    assert "exited with 1 before answering" in output
    assert "refusing to start: 2 bad settings: FACE_ENGINE must be one of local, mxface" in output
    assert "MXFACE_MIN_CONFIDENCE must be at least 60, the mxface engine's floor" in output
    assert "Traceback" not in output and key not in output


# -- what the process printed (keep last: it reads the output of the whole run) -------------------


def test_garbage_never_crashes_the_process(function, http):
    for raw in (b"\x00\xff", b"[" * 50_000, b'{"probe": 1e999999}', b'{"threshold": NaN}'):
        response = http.post(function.url, data=raw, timeout=10)
        assert_refused(response, 400, "bad_request")


def test_output_is_structured_logs_without_keys_or_images(function):
    out, err = function.stdout(), function.stderr()
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert records and all(r["severity"] and r["message"] for r in records)
    traced = [r for r in records if r.get("trace") == TRACE]
    assert traced[0]["logging.googleapis.com/trace"] == f"projects/{PROJECT}/traces/{TRACE}"
    assert (traced[0]["engine"], traced[0]["verdict"]) == ("mxface", "match")
    assert "score" in traced[0] and "elapsed_ms" in traced[0]
    assert "Traceback" not in out + err
    for key in KEYS:
        assert key not in out + err
    for image in (ALICE, PROBE):
        text = b64(image)
        fragments = [text[i : i + 24] for i in range(0, len(text) - 24, len(text) // 20)]
        assert not any(fragment in out + err for fragment in fragments)
    assert not re.search(r"[A-Za-z0-9+/]{200,}", out + err)  # no base64 run of any image
