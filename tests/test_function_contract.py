"""The function's HTTP contract (docs/api.md §1) for input that must be refused: each refusal
has its status and stable code, never a verdict, and bad input never reaches MXFace."""

from __future__ import annotations

import io
import json

import pytest
from faceverify.config import load_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devkit.samples import astronaut_jpeg, b64, small_png, verify_request
from tests.support.function_bodies import GOOD, JPEG, json_values

PNG = small_png()


@pytest.fixture
def client(app, fake, monkeypatch):
    fake.reset()
    monkeypatch.setenv("FACE_ENGINE", "mxface")
    monkeypatch.setenv("MXFACE_API_URL", fake.verify_url)
    monkeypatch.setenv("MXFACE_KEY", fake.key)
    for name in ("MXFACE_KEY_SECRET", "MAX_REQUEST_BYTES", "MAX_IMAGE_PIXELS"):
        monkeypatch.delenv(name, raising=False)
    return app.test_client()


def assert_refused(response, status, code):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.json["error"]["code"] == code
    assert response.json["error"]["message"]
    assert set(response.json) == {"error"}


def with_fields(**fields):
    body = json.loads(json.dumps(GOOD))
    for name, value in fields.items():
        if value is ...:
            del body[name]
        else:
            body[name] = value
    return body


def test_well_formed_request_reaches_mxface(client, fake):
    assert client.post("/", json=GOOD).json["verdict"] == "match"
    assert fake.count() == 1


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"", b"[]", b'"text"', b"null", b"{", b"\xff\xfe", b"[" * 100_000],
)
def test_body_that_is_not_a_json_object_is_bad_request(client, fake, raw):
    assert_refused(client.post("/", data=raw, content_type="application/json"), 400, "bad_request")
    assert fake.count() == 0


too_many = [{"id": f"r{i}", "image": b64(JPEG)} for i in range(11)]


@pytest.mark.parametrize(
    "fields",
    [
        {"probe": ...},
        {"probe": 42},
        {"probe": ""},
        {"probe": "!!!!"},
        {"probe": "QQ"},  # padding missing
        {"probe": b64(JPEG)[:40] + "\n" + b64(JPEG)[40:]},
        {"probe": "data:image/jpeg;base64,"},
        {"probe": "dGVzdA==" + "é"},
        {"references": ...},
        {"references": {"id": "a"}},
        {"references": []},
        {"references": too_many},
        {"references": ["image"]},
        {"references": [{"image": b64(JPEG)}]},
        {"references": [{"id": "", "image": b64(JPEG)}]},
        {"references": [{"id": "x" * 129, "image": b64(JPEG)}]},
        {"references": [{"id": 7, "image": b64(JPEG)}]},
        {"references": [{"id": "a", "image": "%%%"}]},
        {"threshold": "high"},
        {"threshold": True},
        {"threshold": -1},
        {"threshold": 100.5},
        {"threshold": 10**400},
        {"threshold": [60]},
    ],
)
def test_wrong_fields_are_bad_request(client, fake, fields):
    assert_refused(client.post("/", json=with_fields(**fields)), 400, "bad_request")
    assert fake.count() == 0


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_threshold_is_bad_request(client, fake, literal):
    raw = json.dumps(GOOD)[:-1] + f', "threshold": {literal}}}'
    assert_refused(client.post("/", data=raw, content_type="application/json"), 400, "bad_request")


@pytest.mark.parametrize("threshold", [0, 0.0, 1e-9, 30, 59.99])
def test_a_threshold_under_the_engines_floor_is_bad_request_naming_it(client, fake, threshold):
    """In range but lax enough to let impostors in (0 would accept anyone): refused, unasked."""
    response = client.post("/", json=with_fields(threshold=threshold))
    assert_refused(response, 400, "bad_request")
    assert "at least 60, the mxface engine's floor" in response.json["error"]["message"]
    assert fake.count() == 0


def test_a_threshold_at_the_floor_is_compared(client, fake):
    assert client.post("/", json=with_fields(threshold=60)).json["threshold"] == 60
    assert fake.count() == 1


def test_data_url_prefix_is_tolerated(client):
    body = with_fields(probe="data:image/jpeg;base64," + b64(JPEG))
    assert client.post("/", json=body).status_code == 200


def test_png_images_are_accepted(client):
    assert client.post("/", json=verify_request(PNG, {"alice": PNG})).json["verdict"] == "match"


def truncated(data: bytes) -> str:
    return b64(data[: len(data) * 2 // 3])


@pytest.mark.parametrize(
    "probe",
    [
        b64(b"plain text, not a picture"),
        b64(b"GIF89a" + bytes(100)),
        b64(b"BM" + bytes(100)),
        b64(b"\xff\xd8\xff" + bytes(100)),  # a JPEG header and nothing else
        truncated(JPEG),
        truncated(PNG),
    ],
)
def test_probe_that_is_not_a_readable_jpeg_or_png_is_invalid_image(client, probe):
    assert_refused(client.post("/", json=with_fields(probe=probe)), 422, "invalid_image")


def test_damaged_reference_is_invalid_image_before_mxface(client, fake):
    body = with_fields(references=[{"id": "a", "image": truncated(JPEG)}])
    response = client.post("/", json=body)
    assert_refused(response, 422, "invalid_image")
    assert "references[0].image" in response.json["error"]["message"]
    assert fake.count() == 0


def test_a_png_over_max_pixels_is_invalid_image(client, fake, monkeypatch):
    monkeypatch.setenv("MAX_IMAGE_PIXELS", "10000")
    body = verify_request(JPEG, {"alice": small_png(101)})  # 10,201 pixels
    assert_refused(client.post("/", json=body), 422, "invalid_image")
    assert fake.count() == 0


def test_a_jpeg_may_announce_64_times_max_pixels_as_it_decodes_at_an_eighth(
    client, fake, monkeypatch
):
    monkeypatch.setenv("MAX_IMAGE_PIXELS", "10000")  # JPEGs up to 640,000 pixels
    accepted = verify_request(astronaut_jpeg(30_000, 512), {"alice": astronaut_jpeg(30_000, 512)})
    assert client.post("/", json=accepted).status_code == 200
    refused = verify_request(astronaut_jpeg(60_000, 1024), {"alice": JPEG})
    assert_refused(client.post("/", json=refused), 422, "invalid_image")
    assert fake.count() == 1


def test_inspect_refuses_a_damaged_image(client, fake):
    assert_refused(client.post("/inspect", json={"image": truncated(JPEG)}), 422, "invalid_image")
    assert_refused(client.post("/inspect", json={"picture": b64(JPEG)}), 400, "bad_request")
    assert fake.count() == 0


# -- routing and size ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
@pytest.mark.parametrize("path", ["/", "/verify", "/inspect"])
def test_other_methods_are_not_allowed(client, method, path):
    response = client.open(path, method=method)
    assert_refused(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "POST"


@pytest.mark.parametrize("path", ["/nope", "/verify/extra", "/inspect2"])
def test_unknown_path_is_not_found(client, path):
    assert_refused(client.post(path, json=GOOD), 404, "not_found")


def test_verify_path_and_trailing_slash_route_to_verify(client):
    assert client.post("/verify", json=GOOD).json["verdict"] == "match"
    assert client.post("/verify/", json=GOOD).json["verdict"] == "match"


def test_body_over_the_limit_is_too_large(client, fake, monkeypatch):
    monkeypatch.setenv("MAX_REQUEST_BYTES", "4096")
    raw = json.dumps(with_fields(probe="A" * 5000)).encode()
    assert_refused(client.post("/", data=raw, content_type="application/json"), 413, "too_large")
    assert fake.count() == 0


def test_chunked_body_over_the_limit_is_too_large(client, monkeypatch):
    monkeypatch.setenv("MAX_REQUEST_BYTES", "4096")
    raw = json.dumps(with_fields(probe="A" * 5000)).encode()
    response = client.post(
        "/",
        input_stream=io.BytesIO(raw),
        headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
        environ_overrides={"wsgi.input_terminated": True},  # what gunicorn sets
    )
    assert_refused(response, 413, "too_large")


def test_body_of_exactly_the_limit_is_read(client, monkeypatch):
    raw = json.dumps(GOOD).encode()
    monkeypatch.setenv("MAX_REQUEST_BYTES", str(len(raw)))
    response = client.post(
        "/",
        input_stream=io.BytesIO(raw),
        headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.json["verdict"] == "match"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FACE_ENGINE", "magic"),
        ("UPSTREAM_TIMEOUT_S", "soon"),
        ("UPSTREAM_TIMEOUT_S", "0"),
        ("MXFACE_MIN_CONFIDENCE", "101"),
        ("MXFACE_MIN_CONFIDENCE", "0"),
        ("MXFACE_MIN_CONFIDENCE", "59.5"),
        ("LOCAL_MATCH_THRESHOLD", "0"),
        ("LOCAL_MATCH_THRESHOLD", "0.36"),
        ("MAX_REQUEST_BYTES", "1.5"),
        ("MXFACE_API_URL", "ftp://faceapi.example/verify"),
    ],
)
def test_bad_setting_is_config_error_naming_it(client, fake, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    response = client.post("/", json=GOOD)
    assert_refused(response, 500, "config_error")
    assert name in response.json["error"]["message"]
    assert fake.key not in response.json["error"]["message"]


def test_every_bad_setting_is_named_in_one_message(client, fake, monkeypatch):
    bad = {"FACE_ENGINE": "magic", "UPSTREAM_TIMEOUT_S": "soon", "LOCAL_MATCH_THRESHOLD": "0.1"}
    for name, value in bad.items():
        monkeypatch.setenv(name, value)
    response = client.post("/", json=GOOD)
    assert_refused(response, 500, "config_error")
    message = response.json["error"]["message"]
    assert message.startswith("3 bad settings: ")
    assert all(name in message for name in bad), message
    assert "at least 0.363, the local engine's floor" in message
    assert fake.count() == 0


def test_a_threshold_setting_at_its_floor_is_taken():
    taken = load_settings({"LOCAL_MATCH_THRESHOLD": "0.363", "MXFACE_MIN_CONFIDENCE": "60"})
    assert (taken.local_match_threshold, taken.mxface_min_confidence) == (0.363, 60.0)


# -- nothing crashes ---------------------------------------------------------------------------

field_values = json_values | st.sampled_from([b64(JPEG), "data:image/png;base64,", "QUJD"])


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        json_values,
        st.fixed_dictionaries(
            {},
            optional={
                "probe": field_values,
                "references": st.lists(
                    st.fixed_dictionaries({}, optional={"id": field_values, "image": field_values}),
                    max_size=3,
                )
                | json_values,
                "threshold": json_values,
            },
        ),
    )
)
def test_no_input_crashes_or_matches(client, body):
    response = client.post("/", json=body)
    assert response.status_code in (200, 400, 422), response.json
    if response.status_code == 200:  # only the two well-formed images can get this far
        assert response.json["verdict"] in ("match", "no_match")
    else:
        assert response.json["error"]["code"] in ("bad_request", "invalid_image", "no_face")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=300))
def test_no_raw_body_crashes(client, raw):
    response = client.post("/", data=raw, content_type="application/json")
    assert response.status_code == 400
    assert response.json["error"]["code"] == "bad_request"
