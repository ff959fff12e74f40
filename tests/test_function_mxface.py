"""The MXFace engine through the function's HTTP contract, against the fake MXFace server."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from faceverify.config import load_settings
from faceverify.engines import mxface

from devkit.fakes.mxface import (
    DETECT_PATH,
    VERIFY_PATH,
    Reply,
    compared,
    detected,
    empty_matches,
    invalid_base64,
    invalid_request,
    match,
    no_face_200,
    no_match,
    rate_limited,
    server_error,
    slow,
    unauthorized,
)
from devkit.procs import REPO, free_port
from devkit.samples import astronaut_jpeg, b64, grace_hopper_jpeg, small_png, verify_request

PROBE = astronaut_jpeg(30_000, 512)
ALICE = grace_hopper_jpeg()
BOB = small_png()
#: A well-formed matchedFaces entry but for matchResult and confidence.
ENTRY = {k: v for k, v in match().body["matchedFaces"][0].items() if k.startswith("image")}


@pytest.fixture
def client(app, fake, monkeypatch):
    fake.reset()
    monkeypatch.setenv("FACE_ENGINE", "mxface")
    monkeypatch.setenv("MXFACE_API_URL", fake.verify_url)
    monkeypatch.setenv("MXFACE_KEY", fake.key)
    monkeypatch.setenv("UPSTREAM_TIMEOUT_S", "2")
    for name in ("MXFACE_KEY_SECRET", "MXFACE_MIN_CONFIDENCE", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(mxface, "BACKOFF_S", 0.01)
    return app.test_client()


def verify(client, probe=PROBE, refs=None, **extra):
    return client.post("/", json=verify_request(probe, refs or {"alice": ALICE}, **extra))


def raw_entry(fields: str) -> bytes:
    """A comparison answer of one entry written by hand (JSON that json.dumps cannot write)."""
    return ('{"matchedFaces":[{' + json.dumps(ENTRY)[1:-1] + "," + fields + "}]}").encode()


def assert_refused(response, status, code):
    assert response.status_code == status, response.json
    assert response.json["error"]["code"] == code
    assert set(response.json) == {"error"}  # no verdict, no score: an error is never a match


# -- results --------------------------------------------------------------------------------


def test_same_face_matches_and_names_the_reference(client, fake):
    response = verify(client, probe=ALICE)
    assert response.status_code == 200
    body = response.json
    assert (body["verdict"], body["matched_id"], body["engine"]) == ("match", "alice", "mxface")
    assert body["score"] == 97.0 and body["threshold"] == 60.0 and body["faces_in_probe"] == 1


def test_reference_goes_as_image1_and_probe_as_image2_with_the_key(client, fake):
    verify(client)
    (seen,) = fake.requests
    assert seen.path == VERIFY_PATH and seen.headers["subscriptionkey"] == fake.key
    assert seen.headers["content-type"] == "application/json"
    assert seen.digests["encoded_image1"] == hashlib.sha256(ALICE).hexdigest()
    assert seen.digests["encoded_image2"] == hashlib.sha256(PROBE).hexdigest()


def test_data_url_prefix_is_stripped_before_sending(client, fake):
    body = verify_request(PROBE, {"alice": ALICE})
    body["probe"] = "data:image/jpeg;base64," + body["probe"]
    assert client.post("/", json=body).json["verdict"] == "no_match"
    assert fake.requests[0].status == 200  # the fake refuses anything but raw base64


def test_other_face_is_no_match_with_its_score(client):
    body = verify(client).json
    assert (body["verdict"], body["matched_id"], body["score"]) == ("no_match", None, 18.0)


@pytest.mark.parametrize(
    ("reply", "extra", "verdict"),
    [
        (compared((1, 65.0)), {}, "match"),  # default threshold 60
        (compared((1, 65.0)), {"threshold": 70}, "no_match"),  # the request raises it
        (compared((0, 80.0)), {}, "no_match"),  # MXFace's own verdict must agree
        (compared((1, 60.0)), {"threshold": 60}, "match"),  # at the threshold
    ],
)
def test_match_needs_both_matchresult_and_our_threshold(client, fake, reply, extra, verdict):
    fake.enqueue(reply)
    assert verify(client, **extra).json["verdict"] == verdict


def test_min_confidence_variable_sets_the_default_threshold(client, fake, monkeypatch):
    monkeypatch.setenv("MXFACE_MIN_CONFIDENCE", "90")
    fake.enqueue(compared((1, 85.0)))
    body = verify(client).json
    assert (body["verdict"], body["threshold"]) == ("no_match", 90.0)


def test_several_faces_in_probe_the_matching_one_counts(client, fake):
    fake.enqueue(compared((0, 20.0), (1, 88.0), (0, 40.0)))
    body = verify(client).json
    assert (body["verdict"], body["score"], body["faces_in_probe"]) == ("match", 88.0, 3)


def test_several_faces_none_matching_is_no_match_with_best_score(client, fake):
    fake.enqueue(compared((0, 20.0), (0, 41.0)))
    body = verify(client).json
    assert (body["verdict"], body["score"], body["faces_in_probe"]) == ("no_match", 41.0, 2)


def test_best_matching_reference_is_reported(client, fake):
    replies = {ALICE: match(75.0), BOB: match(91.0), PROBE: no_match(30.0)}
    fake.verify_rule = lambda image1, image2: replies[image1]
    body = verify(client, refs={"a": ALICE, "b": BOB, "p": PROBE}).json
    assert (body["verdict"], body["matched_id"], body["score"]) == ("match", "b", 91.0)
    assert fake.count() == 3


def test_a_failed_reference_without_any_match_is_an_incomplete_comparison_never_a_match(
    client, fake
):
    """One reference compared and did not match, the other failed: a real chance to match was
    used, so the answer is comparison_incomplete (a failed attempt), not a service error."""
    fake.verify_rule = lambda image1, image2: no_match() if image1 == ALICE else server_error()
    assert_refused(verify(client, refs={"a": ALICE, "b": BOB}), 502, "comparison_incomplete")


def test_every_reference_failing_is_the_services_error(client, fake):
    fake.verify_rule = lambda image1, image2: server_error()
    assert_refused(verify(client, refs={"a": ALICE, "b": BOB}), 502, "upstream_error")


def test_a_match_stands_when_another_reference_failed(client, fake):
    fake.verify_rule = lambda image1, image2: match() if image1 == ALICE else server_error()
    body = verify(client, refs={"a": ALICE, "b": BOB}).json
    assert (body["verdict"], body["matched_id"]) == ("match", "a")


# -- only the person in front: the probe's widest face and those at least 80 % as wide ---------


def test_a_matching_face_small_beside_a_larger_one_is_no_match(client, fake):
    fake.enqueue(compared((1, 95.0, 60), (0, 30.0, 150)))  # 60 px: someone further back
    body = verify(client).json
    assert (body["verdict"], body["matched_id"], body["score"]) == ("no_match", None, 30.0)
    assert body["faces_in_probe"] == 2  # every face seen still counts


def test_the_smaller_face_is_left_out_wherever_mxface_lists_it(client, fake):
    fake.enqueue(compared((0, 30.0, 150), (1, 95.0, 60)))
    assert verify(client).json["verdict"] == "no_match"


@pytest.mark.parametrize("width", [120, 135, 150, 200])  # 120 is exactly 80 % of 150
def test_a_face_nearly_as_wide_as_the_widest_is_in_front_and_matches(client, fake, width):
    fake.enqueue(compared((0, 30.0, 150), (1, 95.0, width)))
    body = verify(client).json
    assert (body["verdict"], body["score"], body["faces_in_probe"]) == ("match", 95.0, 2)


def test_the_rule_holds_for_each_reference(client, fake):
    replies = {ALICE: compared((1, 90.0, 50), (0, 20.0, 140)), BOB: compared((0, 25.0, 140))}
    fake.verify_rule = lambda image1, image2: replies[image1]
    body = verify(client, refs={"a": ALICE, "b": BOB}).json
    assert (body["verdict"], body["score"]) == ("no_match", 25.0)


def probe_face(value) -> dict:
    """A matching entry whose probe face (image2_face) is `value`, or lacks it when `...`."""
    entry = {**match(99.0).body["matchedFaces"][0]}
    if value is ...:
        del entry["image2_face"]
    else:
        entry["image2_face"] = value
    return {"matchedFaces": [entry]}


@pytest.mark.parametrize(
    "image2_face",
    [
        ...,
        None,
        {},
        {"quality": 0.9},
        {"faceRectangle": [40, 40, 120, 150]},
        {"faceRectangle": {"x": 40, "y": 40, "height": 150}},
        {"faceRectangle": {"x": 40, "y": 40, "width": 0, "height": 150}},
        {"faceRectangle": {"x": 40, "y": 40, "width": -120, "height": 150}},
        {"faceRectangle": {"x": 40, "y": 40, "width": "120", "height": 150}},
        {"faceRectangle": {"x": 40, "y": 40, "width": True, "height": 150}},
        {"faceRectangle": {"x": 40, "y": None, "width": 120, "height": 150}},
    ],
)
def test_a_match_without_a_usable_probe_face_rectangle_is_upstream_error(client, fake, image2_face):
    fake.enqueue(Reply(200, probe_face(image2_face)))
    assert_refused(verify(client), 502, "upstream_error")


def test_entries_used_to_test_malformed_answers_are_otherwise_well_formed(client, fake):
    fake.enqueue(
        Reply(200, {"matchedFaces": [{**ENTRY, "matchResult": 1, "confidence": 99}]}),
        Reply(200, raw_entry('"matchResult":1,"confidence":99')),
    )
    assert verify(client).json["verdict"] == "match"
    assert verify(client).json["verdict"] == "match"


# -- "no face": in the probe, or a reference that cannot be used -----------------------------

NO_FACE_REPLIES = [
    no_face_200(),
    empty_matches(),
    Reply(400, {"errorCode": 400, "errorMessage": "No face detected"}),
]


def detect_calls(fake) -> list:
    return [r for r in fake.requests if r.path == DETECT_PATH]


def assert_reference_unusable(response, reference_id):
    assert_refused(response, 422, "reference_unusable")
    error = response.json["error"]
    assert set(error) == {"code", "message", "reference_id"}
    assert error["reference_id"] == reference_id and error["message"]


@pytest.mark.parametrize("no_face", NO_FACE_REPLIES)
def test_no_face_in_every_pair_and_none_found_in_the_probe_is_no_face(client, fake, no_face):
    fake.verify_rule = lambda image1, image2: no_face
    response = verify(client, refs={"a": ALICE, "b": BOB})
    assert_refused(response, 422, "no_face")
    assert set(response.json["error"]) == {"code", "message"}
    (detect,) = detect_calls(fake)  # asked once, about the probe
    assert detect.digests["encoded_image"] == hashlib.sha256(PROBE).hexdigest()


def test_no_face_in_every_pair_and_detect_answering_no_faces_is_no_face(client, fake):
    fake.enqueue(no_face_200())
    fake.enqueue(Reply(200, {"faces": []}), path=DETECT_PATH)
    assert_refused(verify(client), 422, "no_face")
    assert fake.pending(DETECT_PATH) == 0


@pytest.mark.parametrize("no_face", NO_FACE_REPLIES)
def test_no_face_in_every_pair_but_a_face_in_the_probe_names_the_first_reference(
    client, fake, no_face
):
    fake.verify_rule = lambda image1, image2: no_face
    fake.enqueue(detected(), path=DETECT_PATH)
    assert_reference_unusable(verify(client, refs={"a": ALICE, "b": BOB}), "a")
    assert len(detect_calls(fake)) == 1


def test_a_pair_without_a_face_beside_one_that_compared_is_that_reference(client, fake):
    replies = {ALICE: no_match(), BOB: no_face_200(), PROBE: no_face_200()}
    fake.verify_rule = lambda image1, image2: replies[image1]
    assert_reference_unusable(verify(client, refs={"a": ALICE, "b": BOB, "p": PROBE}), "b")
    assert detect_calls(fake) == []  # a pair that compared shows the probe has a face


def test_a_match_with_another_reference_wins_over_an_unusable_one(client, fake):
    fake.verify_rule = lambda image1, image2: match() if image1 == ALICE else no_face_200()
    body = verify(client, refs={"b": BOB, "a": ALICE}).json
    assert (body["verdict"], body["matched_id"]) == ("match", "a")


def test_a_failure_of_the_service_wins_over_no_face(client, fake):
    fake.verify_rule = lambda image1, image2: server_error() if image1 == ALICE else no_face_200()
    assert_refused(verify(client, refs={"b": BOB, "a": ALICE}), 502, "upstream_error")
    assert detect_calls(fake) == []


def test_a_failed_detect_after_no_face_everywhere_fails_closed(client, fake):
    fake.enqueue(no_face_200())
    fake.enqueue(*[server_error()] * mxface.MAX_ATTEMPTS, path=DETECT_PATH)
    assert_refused(verify(client), 502, "upstream_error")


def test_reference_unusable_is_the_documented_422_and_logged_with_its_id(client, fake, capsys):
    import jsonschema_rs
    import yaml

    fake.verify_rule = lambda image1, image2: no_match() if image1 == ALICE else no_face_200()
    capsys.readouterr()
    response = verify(client, refs={"alice-1": ALICE, "bob-2": BOB})
    assert_reference_unusable(response, "bob-2")
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["reference_id"] == "bob-2"
    spec = yaml.safe_load((REPO / "docs" / "openapi-function.yaml").read_text())
    schema = spec["components"]["responses"]["Unprocessable"]["content"]["application/json"]
    validator = jsonschema_rs.validator_for({**schema["schema"], "components": spec["components"]})
    validator.validate(response.json)
    error = response.json["error"]
    for wrong in (
        {"error": {**error, "code": "no_face"}},  # only reference_unusable names a reference
        {"error": {k: v for k, v in error.items() if k != "reference_id"}},
        {"error": {**error, "reference_id": ""}},
    ):
        assert not validator.is_valid(wrong), wrong


# -- errors: only a 200 with non-empty matchedFaces and no error code is a result -------------


@pytest.mark.parametrize(
    ("reply", "status", "code"),
    [
        (unauthorized(), 500, "config_error"),
        (invalid_request(), 502, "upstream_error"),
        (invalid_base64(), 502, "upstream_error"),
        (Reply(200, {**compared((1, 99.0)).body, "code": 500}), 502, "upstream_error"),
        (Reply(200, {**compared((1, 99.0)).body, "errorCode": "400"}), 502, "upstream_error"),
        (Reply(200, b"<html>maintenance</html>"), 502, "upstream_error"),
        (Reply(200, {"result": "ok"}), 502, "upstream_error"),
        (Reply(200, [compared((1, 99.0)).body]), 502, "upstream_error"),
        (Reply(200, {"matchedFaces": [{**ENTRY, "matchResult": 1}]}), 502, "upstream_error"),
        (
            Reply(200, {"matchedFaces": [{**ENTRY, "matchResult": True, "confidence": 99}]}),
            502,
            "upstream_error",
        ),
        (
            Reply(200, {"matchedFaces": [{**ENTRY, "matchResult": 2, "confidence": 99}]}),
            502,
            "upstream_error",
        ),
        (
            Reply(200, {"matchedFaces": [{**ENTRY, "matchResult": 1, "confidence": "99"}]}),
            502,
            "upstream_error",
        ),
        (
            Reply(200, raw_entry('"matchResult":1,"confidence":NaN')),
            502,
            "upstream_error",
        ),
        (
            Reply(200, raw_entry('"matchResult":1,"confidence":1e999')),
            502,
            "upstream_error",
        ),
        (Reply(204, None), 502, "upstream_error"),
        (Reply(403, {"message": "Forbidden"}), 502, "upstream_error"),
        (Reply(302, None, headers=(("Location", "http://127.0.0.1:1/"),)), 502, "upstream_error"),
        (Reply(413, None), 413, "too_large"),
    ],
)
def test_anything_but_a_clean_result_is_an_error(client, fake, reply, status, code):
    fake.enqueue(reply)
    assert_refused(verify(client), status, code)
    assert fake.count() == 1  # none of these is worth a retry


def test_401_message_names_the_variable_not_the_key(client, fake):
    fake.enqueue(unauthorized())
    message = verify(client).json["error"]["message"]
    assert "MXFACE_KEY" in message and fake.key not in message


# -- retries and the deadline ---------------------------------------------------------------


@pytest.mark.parametrize("first", [rate_limited(), server_error(), Reply(503, None)])
def test_one_retryable_failure_then_success_is_retried(client, fake, first):
    fake.enqueue(first, match())
    assert verify(client).json["verdict"] == "match"
    assert fake.count() == 2


def test_429_retry_after_zero_still_asks_the_caller_to_wait_a_second(client, fake):
    fake.enqueue(*[rate_limited("0")] * mxface.MAX_ATTEMPTS)
    response = verify(client)
    assert_refused(response, 429, "rate_limited")
    assert response.headers["Retry-After"] == "1"


def test_429_retry_after_is_honoured(client, fake):
    fake.enqueue(rate_limited("0.3"), no_match())
    started = time.monotonic()
    assert verify(client).json["verdict"] == "no_match"
    assert time.monotonic() - started >= 0.3


def test_429_every_time_is_rate_limited_with_retry_after(client, fake):
    fake.enqueue(*[rate_limited()] * mxface.MAX_ATTEMPTS)
    response = verify(client)
    assert_refused(response, 429, "rate_limited")
    assert response.headers["Retry-After"] == str(mxface.DEFAULT_RETRY_AFTER_S)
    assert fake.count() == mxface.MAX_ATTEMPTS


def test_429_asking_to_wait_past_the_deadline_answers_at_once(client, fake):
    fake.enqueue(rate_limited("30"))
    started = time.monotonic()
    response = verify(client)
    assert_refused(response, 429, "rate_limited")
    assert response.headers["Retry-After"] == "30"
    assert fake.count() == 1 and time.monotonic() - started < 1.0


def test_server_errors_every_time_stop_after_bounded_attempts(client, fake):
    fake.enqueue(*[server_error()] * (mxface.MAX_ATTEMPTS + 2))
    assert_refused(verify(client), 502, "upstream_error")
    assert fake.count() == mxface.MAX_ATTEMPTS


def test_unreachable_service_is_upstream_error(client, monkeypatch):
    monkeypatch.setenv("MXFACE_API_URL", f"http://127.0.0.1:{free_port()}{VERIFY_PATH}")
    assert_refused(verify(client), 502, "upstream_error")


def test_slow_answer_past_the_deadline_is_upstream_timeout(client, fake, monkeypatch):
    monkeypatch.setenv("UPSTREAM_TIMEOUT_S", "0.5")
    fake.enqueue(slow(match(), 1.5))
    started = time.monotonic()
    assert_refused(verify(client), 504, "upstream_timeout")
    assert time.monotonic() - started < 1.2


def test_retries_share_one_deadline(client, fake, monkeypatch):
    monkeypatch.setenv("UPSTREAM_TIMEOUT_S", "0.8")
    fake.enqueue(*[slow(server_error(), 0.5)] * 3, match())
    started = time.monotonic()
    response = verify(client)
    assert response.status_code in (502, 504) and "verdict" not in response.json
    assert time.monotonic() - started < 1.3 and fake.count() <= 2


def test_body_over_the_mxface_cap_is_refused_before_sending(client, fake, monkeypatch):
    monkeypatch.setattr(mxface, "MAX_BODY_BYTES", len(b64(PROBE)) + 1000)
    assert_refused(verify(client), 413, "too_large")
    assert fake.count() == 0


def test_body_over_the_fake_cap_is_too_large_from_upstream(client, fake, monkeypatch):
    monkeypatch.setattr(fake, "max_body_bytes", 50_000)
    assert_refused(verify(client), 413, "too_large")
    assert fake.count() == 1


# -- /inspect: face/detect -------------------------------------------------------------------


@pytest.mark.parametrize("wrapped", [False, True])
def test_inspect_reads_the_detect_answer_wrapped_or_not(client, fake, wrapped):
    fake.detect_reply = detected([(10, 20, 100, 120), (200, 40.4, 80, 90)], wrapped=wrapped)
    response = client.post("/inspect", json={"image": b64(PROBE)})
    assert response.status_code == 200
    assert response.json == {
        "faces": [
            {"box": [10, 20, 100, 120], "quality": 0.9},
            {"box": [200, 40, 80, 90], "quality": 0.9},
        ],
        "engine": "mxface",
    }
    (seen,) = fake.requests
    assert seen.path == DETECT_PATH and seen.headers["subscriptionkey"] == fake.key


def test_inspect_without_a_face_is_an_empty_list(client, fake):
    fake.enqueue(no_face_200(), path=DETECT_PATH)
    assert client.post("/inspect", json={"image": b64(PROBE)}).json["faces"] == []


@pytest.mark.parametrize(
    "body",
    [
        {"detected": []},
        [],
        [{"faces": []}, {"faces": []}],
        {"faces": "none"},
        {"faces": [{"faceRectangle": {"x": 1, "y": 2}}]},
        {"faces": [{"faceRectangle": {"x": 1, "y": 2, "width": 0, "height": 3}}]},
        {"faces": [{"faceRectangle": {"x": 1, "y": 2, "width": 5, "height": 3}, "quality": "x"}]},
        {"faces": [{"box": [1, 2, 3, 4]}]},
    ],
)
def test_inspect_with_an_unexpected_detect_answer_is_upstream_error(client, fake, body):
    fake.enqueue(Reply(200, body), path=DETECT_PATH)
    assert_refused(client.post("/inspect", json={"image": b64(PROBE)}), 502, "upstream_error")


def test_detect_url_is_derived_from_the_verify_url():
    settings = load_settings({"FACE_ENGINE": "mxface"})
    assert settings.mxface_api_url == "https://faceapi.mxface.ai/api/v3/face/verify"
    assert settings.mxface_detect_url == "https://faceapi.mxface.ai/api/v3/face/detect"
    moved = load_settings({"MXFACE_API_URL": "http://127.0.0.1:9/x/face/verify"})
    assert moved.mxface_detect_url == "http://127.0.0.1:9/x/face/detect"


# -- key and logs ----------------------------------------------------------------------------


def test_no_key_configured_is_config_error_naming_the_variables(client, fake, monkeypatch):
    monkeypatch.delenv("MXFACE_KEY")
    response = verify(client)
    assert_refused(response, 500, "config_error")
    assert "MXFACE_KEY_SECRET" in response.json["error"]["message"]
    assert fake.count() == 0


def test_key_that_cannot_be_a_header_is_config_error_without_echoing_it(client, monkeypatch):
    monkeypatch.setenv("MXFACE_KEY", "secret value\twith spaces")
    response = verify(client)
    assert_refused(response, 500, "config_error")
    assert "secret value" not in response.json["error"]["message"]


def test_one_structured_log_line_per_request_with_trace(client, fake, monkeypatch, capsys):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo-project")
    capsys.readouterr()
    trace = "105445aa7843bc8bf206b12000100000"
    body = verify_request(ALICE, {"alice": ALICE})
    client.post("/", json=body, headers={"X-Cloud-Trace-Context": f"{trace}/1;o=1"})
    fake.enqueue(unauthorized())
    client.post("/", json=body)
    out = capsys.readouterr().out
    done, refused = (json.loads(line) for line in out.splitlines())
    assert done["severity"] == "INFO" and done["message"]
    assert done["logging.googleapis.com/trace"] == f"projects/demo-project/traces/{trace}"
    assert (done["engine"], done["verdict"], done["score"]) == ("mxface", "match", 97.0)
    assert isinstance(done["elapsed_ms"], float)
    assert refused["severity"] == "ERROR" and refused["code"] == "config_error"
    assert refused["verdict"] == "error" and refused["engine"] == "mxface"
    assert fake.key not in out and body["probe"][100:160] not in out
