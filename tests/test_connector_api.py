"""The connector's macro API (docs/api.md §2) end to end: the connector process over HTTPS, the real
function process with the local engine, simulated devices. Every answer is checked as the macro
checks it (signature recomputed here, serial and nonce echo, expiry)."""

from __future__ import annotations

import io
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image

from connector.tls import peer_fingerprint, pem_fingerprint
from devkit.certs import self_signed_identity
from devkit.connector_e2e import (
    assert_error,
    enroll,
    extra_device,
    image_size,
    open_sessions,
    open_store,
    session_from,
    sim_stats,
    status,
    verify,
    write_jpeg,
)
from devkit.macro_client import (
    SIGNATURE_HEADER,
    answer_holds,
    answer_signature,
    authorization,
    body_bytes,
    sent_nonce,
)
from devkit.photos import FRAME, write_frames
from devkit.samples import astronaut_image, grace_hopper_jpeg
from devkit.simulator import DeviceSimulator
from devkit.stack import SIM_ACCOUNT, SimDevice, Stack, start_stack

pytestmark = pytest.mark.slow  # starts real processes

GRACE = "Grace Hopper"


def two_people_frame() -> Image.Image:
    """Grace Hopper and the astronaut side by side, each filling half of a camera frame."""
    grace = Image.open(io.BytesIO(grace_hopper_jpeg())).convert("RGB")
    frame = Image.new("RGB", FRAME, (92, 96, 100))
    half = FRAME[0] // 2
    for i, picture in enumerate((grace, astronaut_image())):
        scale = FRAME[1] / picture.height
        scaled = picture.resize((round(picture.width * scale), FRAME[1]), Image.Resampling.BICUBIC)
        left = (scaled.width - half) // 2
        frame.paste(scaled.crop((left, 0, left + half, FRAME[1])), (half * i, 0))
    return frame


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("frames")
    paths = write_frames(folder)
    paths["two_people"] = write_jpeg(folder / "two_people.jpg", two_people_frame())
    return paths


class Devices:
    """The module's devices, one per independent scenario."""

    def __init__(self, stack: Stack, extras: dict[str, SimDevice]) -> None:
        self.enrolled, self.empty, self.flow, self.refusals = stack.devices
        self.bad_pin = extras["bad_pin"]  # an in-process simulator, pinned to another certificate
        self.all = [*stack.devices, *extras.values()]


@pytest.fixture(scope="module")
def world(frames, tmp_path_factory):
    # How the connector's device client fails (a device down, a wrong password, a snapshot that
    # is no JPEG...) is tests/test_device_client.py's, through the stack tests/test_faults.py's;
    # the code each failure answers, tests/test_verification_unit.py's. Here: a pin in the TOML
    # file reaches the device client, which sends no password to another certificate.
    extra_password = secrets.token_urlsafe(18)
    pinned = DeviceSimulator({SIM_ACCOUNT: extra_password}, frames["grace_hopper"]).start()
    extras = {
        "bad_pin": extra_device(
            "XBADPIN",
            sim=pinned,
            fingerprint=":".join(["AB"] * 32),
            password_ref="env:EXTRA_PASSWORD",
        ),
    }
    stack = None
    try:
        stack = start_stack(
            tmp_path_factory.mktemp("stack"),
            images=frames["grace_hopper"],
            devices=4,
            extra_toml="\n" + "\n".join(e.toml for e in extras.values()),
            connector_env={"EXTRA_PASSWORD": extra_password},
            extra_keys={e.device.serial: e.device.key for e in extras.values()},
        )
        devices = Devices(stack, {name: e.device for name, e in extras.items()})
        answer = enroll(stack, devices.enrolled, GRACE)
        assert answer["result"] == "enrolled", answer
        # The pinned device gets a reference straight in the store, so a verify reaches it.
        store = open_store(stack)
        try:
            for extra in extras.values():
                store.add_reference(extra.device.serial, "Seeded Person", grace_hopper_jpeg())
        finally:
            store.close()
        yield stack, devices
    finally:
        if stack is not None:
            stack.stop()
        pinned.close()


@pytest.fixture(scope="module")
def stack(world) -> Stack:
    return world[0]


@pytest.fixture(scope="module")
def devices(world) -> Devices:
    return world[1]


@pytest.fixture(autouse=True)
def no_leaked_device_sessions(devices):
    yield
    assert open_sessions(devices.all) == {}


@pytest.fixture
def shows(devices, frames):
    """Point the enrolled device's camera at a frame; back to Grace Hopper afterwards."""
    device = devices.enrolled

    def show(name: str) -> None:
        device.control(images=str(frames[name]))

    yield show
    device.control(images=str(frames["grace_hopper"]), black=False)


# --- verify outcomes ---------------------------------------------------------------------------


def test_an_enrolled_face_matches_with_a_signed_fresh_answer(stack, devices):
    answer = verify(stack, devices.enrolled)
    assert answer["verdict"] == "match"
    assert answer["person"] == GRACE
    assert answer["message"] == f"Welcome, {GRACE}"
    assert answer["retry_after_s"] is None


def test_a_closed_camera_is_too_dark(stack, devices):
    devices.enrolled.control(black=True)
    try:
        assert_error(verify(stack, devices.enrolled), "too_dark")
    finally:
        devices.enrolled.control(black=False)


def test_a_scene_without_a_face_is_no_face(stack, devices, shows):
    shows("no_face")
    assert_error(verify(stack, devices.enrolled), "no_face")


# --- device failures ---------------------------------------------------------------------------


def test_a_certificate_that_is_not_the_pinned_one_gets_no_credentials(stack, devices):
    before = sim_stats(devices.bad_pin)["signin_attempts"]
    assert_error(verify(stack, devices.bad_pin), "device_tls_error")
    assert sim_stats(devices.bad_pin)["signin_attempts"] == before


# --- enrollment ----------------------------------------------------------------------------------


def test_enrollment_needs_an_empty_device_or_an_unlocked_session(stack, devices):
    device = devices.flow
    assert status(stack, device) == {"enrolled_people": 0, "unlocked": False, "locked_out_for_s": 0}
    assert enroll(stack, device, f"  {GRACE} ") == {
        "result": "enrolled",
        "code": None,
        "message": f"Photo saved for {GRACE}.",
        "person": GRACE,
    }
    assert status(stack, device)["enrolled_people"] == 1

    refused = enroll(stack, device, "Someone Else")
    assert (refused["result"], refused["code"]) == ("refused", "locked")

    assert verify(stack, device)["verdict"] == "match"
    assert status(stack, device)["unlocked"] is True
    assert enroll(stack, device, GRACE)["result"] == "enrolled"  # a second photo, same person
    assert [p.references for p in _people(stack, device)] == [2]

    locked = stack.call("/v1/lock", device, {"serial": device.serial})
    assert (locked.status_code, locked.json()) == (200, {"unlocked": False})
    assert status(stack, device)["unlocked"] is False
    refused = enroll(stack, device, "Someone Else")
    assert (refused["result"], refused["code"]) == ("refused", "locked")
    assert status(stack, device)["enrolled_people"] == 1


def _people(stack, device):
    store = open_store(stack)
    try:
        return store.people(device.serial)
    finally:
        store.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [("two_people", "several_faces"), ("no_face", "no_face"), ("black", "too_dark")],
)
def test_enrollment_refuses_a_snapshot_without_exactly_one_usable_face(
    stack, devices, frames, frame, code
):
    device = devices.refusals
    if frame == "black":
        device.control(black=True)
    else:
        device.control(images=str(frames[frame]))
    try:
        answer = enroll(stack, device, "Ada Lovelace")
    finally:
        device.control(black=False, images=str(frames["grace_hopper"]))
    assert (answer["result"], answer["code"], answer["person"]) == ("refused", code, "Ada Lovelace")
    assert answer["message"]
    assert status(stack, device)["enrolled_people"] == 0


def test_the_stored_face_is_a_small_crop_encrypted_at_rest(stack, devices, frames):
    store = open_store(stack)
    try:
        references = store.references_for(devices.enrolled.serial)
    finally:
        store.close()
    assert [ref.person for ref in references] == [GRACE]
    crop = references[0].image
    assert max(image_size(crop)) <= 512
    snapshot = frames["grace_hopper"].read_bytes()  # what the simulator sends, byte for byte
    at_rest = b"".join(
        path.read_bytes()
        for path in (stack.workdir / "faceid.db", stack.workdir / "faceid.db-wal")
        if path.exists()
    )
    assert GRACE.encode() in at_rest  # the right files: names are stored in clear
    for image in (crop, snapshot):
        for start in range(len(image) // 8, len(image) - 32, len(image) // 8):
            assert image[start : start + 32] not in at_rest


# --- authentication and HTTP rules ---------------------------------------------------------------


def _post(stack, path, data=b"", headers=None, source="127.0.0.1"):
    """A raw POST (what a client that is not the macro may send)."""
    with session_from(source) as http:
        http.trust_env = False
        return http.post(
            stack.connector_url + path,
            data=data,
            headers={"Content-Type": "application/json", **(headers or {})},
            verify=str(stack.ca_path),
            timeout=30,
        )


def _signed_post(stack, device, path, data: bytes, *, key=None, serial=None, source="127.0.0.1"):
    """POST `data` exactly as given, signed by `key` (the device's by default) as `serial`."""
    serial = serial or device.serial
    header = authorization(key or device.key, "POST", path, serial, data)
    return _post(stack, path, data, {"Authorization": header}, source)


def _verify_body(device) -> bytes:
    return body_bytes({"serial": device.serial})


def test_a_wrong_key_and_an_unknown_serial_get_the_same_401(stack, devices):
    device = devices.enrolled
    body = _verify_body(device)
    wrong_key = _signed_post(
        stack, device, "/v1/verify", body, key=secrets.token_bytes(32), source="127.0.0.2"
    )
    unknown = _signed_post(
        stack,
        device,
        "/v1/verify",
        body_bytes({"serial": "NOSUCHDEVICE"}),
        serial="NOSUCHDEVICE",
        source="127.0.0.2",
    )
    assert wrong_key.status_code == unknown.status_code == 401
    assert wrong_key.content == unknown.content
    assert wrong_key.json()["error"]["code"] == "unauthorized"
    assert SIGNATURE_HEADER not in wrong_key.headers and SIGNATURE_HEADER not in unknown.headers
    assert wrong_key.headers["X-Request-Id"] != unknown.headers["X-Request-Id"]


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Basic Zm9vOmJhcg==",
        "Bearer",
        "Bearer 0123456789abcdef0123456789abcdef",
        "FaceID-HMAC-SHA256",
        "FaceID-HMAC-SHA256 serial=SIM0000,ts=1,nonce=0123456789abcdef",
        "faceid-hmac-sha256 serial=SIM0000,ts=1,nonce=0123456789abcdef,signature=" + "0" * 64,
        "FaceID-HMAC-SHA256 serial=SIM0000,ts=1,nonce=short,signature=" + "0" * 64,
        "FaceID-HMAC-SHA256 serial=SIM0000,ts=1,nonce=0123456789abcdef,signature=" + "A" * 64,
        "FaceID-HMAC-SHA256 serial=SIM0000, ts=1,nonce=0123456789abcdef,signature=" + "0" * 64,
    ],
)
def test_a_request_without_a_well_formed_signature_is_401(stack, devices, header):
    device = devices.enrolled
    headers = {} if header is None else {"Authorization": header}
    answer = _post(stack, "/v1/verify", _verify_body(device), headers, source="127.0.0.4")
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthorized"


def test_a_request_signed_for_another_body_path_or_method_is_401(stack, devices):
    device = devices.enrolled
    body = _verify_body(device)
    other_body = authorization(device.key, "POST", "/v1/verify", device.serial, body + b" ")
    other_path = authorization(device.key, "POST", "/v1/lock", device.serial, body)
    other_method = authorization(device.key, "GET", "/v1/verify", device.serial, body)
    for header in (other_body, other_path, other_method):
        answer = _post(stack, "/v1/verify", body, {"Authorization": header}, source="127.0.0.5")
        assert (answer.status_code, answer.json()["error"]["code"]) == (401, "unauthorized")


def test_a_body_naming_another_serial_than_the_signature_is_401_and_signed(stack, devices):
    device, other = devices.enrolled, devices.empty
    for body in (body_bytes({"serial": other.serial}), b"{}"):
        answer = _signed_post(stack, device, "/v1/verify", body, source="127.0.0.5")
        assert (answer.status_code, answer.json()["error"]["code"]) == (401, "unauthorized")
        assert answer_holds(device.key, answer)
    answer = stack.call(f"/v1/status?serial={other.serial}", device)
    assert (answer.status_code, answer.json()["error"]["code"]) == (401, "unauthorized")


@pytest.mark.parametrize("offset_s", [-61, 61, -3600, 10**9])
def test_a_request_more_than_60_s_off_the_clock_is_401_clock_skew(stack, devices, offset_s):
    device = devices.empty
    answer = stack.call(
        "/v1/verify", device, {"serial": device.serial}, ts=int(time.time()) + offset_s
    )
    assert (answer.status_code, answer.json()["error"]["code"]) == (401, "clock_skew")
    assert answer_holds(device.key, answer), "a refusal after a valid signature is signed"


def test_a_request_55_s_off_the_clock_is_accepted(stack, devices):
    device = devices.empty
    for offset_s in (-55, 55):
        answer = stack.call(
            "/v1/verify", device, {"serial": device.serial}, ts=int(time.time()) + offset_s
        )
        assert answer.status_code == 200, answer.text


def test_a_replayed_request_is_401_replayed_and_reaches_no_device(stack, devices):
    device = devices.enrolled
    body = _verify_body(device)
    header = {"Authorization": authorization(device.key, "POST", "/v1/verify", device.serial, body)}
    first = _post(stack, "/v1/verify", body, header)
    assert first.status_code == 200 and answer_holds(device.key, first)
    before = sim_stats(device)["device_requests"]
    again = _post(stack, "/v1/verify", body, header, source="127.0.0.6")
    assert (again.status_code, again.json()["error"]["code"]) == (401, "replayed")
    assert sim_stats(device)["device_requests"] == before


def test_the_same_signed_request_sent_20_times_at_once_is_accepted_at_most_once(stack, devices):
    device = devices.enrolled
    body = _verify_body(device)
    header = {"Authorization": authorization(device.key, "POST", "/v1/verify", device.serial, body)}
    before = sim_stats(device)["signins"]
    barrier = threading.Barrier(20)

    def send(i: int) -> requests.Response:
        barrier.wait()
        return _post(stack, "/v1/verify", body, header, source=f"127.0.1.{i + 1}")

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(send, range(20)))
    codes = sorted(
        a.json().get("error", {}).get("code", "accepted") if a.status_code != 200 else "accepted"
        for a in answers
    )
    assert codes.count("accepted") == 1, codes
    assert codes.count("replayed") == 19, codes
    assert sim_stats(device)["signins"] - before == 1


def test_repeated_failed_authentication_from_one_address_is_rate_limited(stack, devices):
    device = devices.enrolled
    body = _verify_body(device)
    codes = [
        _signed_post(
            stack, device, "/v1/verify", body, key=secrets.token_bytes(32), source="127.0.0.3"
        ).status_code
        for _ in range(10)
    ]
    assert codes == [401] * 10
    refused = _signed_post(
        stack, device, "/v1/verify", body, key=secrets.token_bytes(32), source="127.0.0.3"
    )
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # A correctly signed request from the same address (a device behind the same NAT) still works.
    assert _signed_post(stack, device, "/v1/lock", body, source="127.0.0.3").status_code == 200
    assert status(stack, device)["enrolled_people"] == 1


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/v1/verify", b"not json"),
        ("/v1/verify", b"[1, 2]"),
        ("/v1/enroll", b'{"serial": "SIM0000", "person": "a/b"}'),
        ("/v1/enroll", b'{"serial": "SIM0000", "person": "tab\\there"}'),
        ("/v1/enroll", b'{"serial": "SIM0000", "person": "   "}'),
        ("/v1/enroll", b'{"serial": "SIM0000"}'),
    ],
)
def test_a_malformed_body_is_400_signed_and_the_device_is_not_contacted(stack, devices, path, raw):
    device = devices.enrolled
    before = sim_stats(device)["device_requests"]
    answer = _signed_post(stack, device, path, raw)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "bad_request"
    assert answer.headers["X-Request-Id"]
    assert answer_holds(device.key, answer)
    assert sim_stats(device)["device_requests"] == before


def test_the_longest_and_shortest_nonces_are_accepted_and_echoed(stack, devices):
    device = devices.empty
    for nonce in ("a" * 16, "Z_-9" * 16):
        answer = stack.call("/v1/verify", device, {"serial": device.serial}, nonce=nonce)
        assert (answer.status_code, answer.json()["nonce"]) == (200, nonce)
        assert answer_holds(device.key, answer)


def test_every_answer_is_ascii_json_and_signed_over_its_exact_bytes(stack, devices):
    device = devices.enrolled
    answers = [
        stack.call("/v1/lock", device, {"serial": device.serial}),
        stack.call("/v1/verify", devices.empty, {"serial": devices.empty.serial}),
        # Refused (locked: people are enrolled and nobody unlocked), the name echoed.
        stack.call("/v1/enroll", device, {"serial": device.serial, "person": "Zoë Ünal 李"}),
        stack.call(f"/v1/status?serial={device.serial}", device),
    ]
    for answer, signer in zip(answers, (device, devices.empty, device, device), strict=True):
        assert answer.status_code == 200, answer.text
        assert answer.content.isascii()
        assert answer_holds(signer.key, answer)
    named = answers[2].json()
    assert named["person"] == "Zoë Ünal 李" and b"\\u00eb" in answers[2].content


def test_a_tampered_answer_no_longer_verifies(stack, devices):
    device = devices.empty
    answer = stack.call("/v1/verify", device, {"serial": device.serial})
    assert answer_holds(device.key, answer)
    forged = answer.content.replace(b'"message": "', b'"message": "Go in. ', 1)
    assert forged != answer.content
    nonce = sent_nonce(answer)
    assert nonce is not None
    given = answer.headers[SIGNATURE_HEADER]
    assert answer_signature(device.key, nonce, forged) != given
    assert answer_signature(device.key, nonce, answer.content) == given


def _chunked(stack, device, body: bytes):
    """Sent without Content-Length (chunked): the limit must hold while reading."""
    header = authorization(device.key, "POST", "/v1/verify", device.serial, body)
    return _post(
        stack,
        "/v1/verify",
        (body[i : i + 4096] for i in range(0, len(body), 4096)),
        {"Authorization": header},
    )


def _body_of(device, size: int) -> bytes:
    head = f'{{"serial": "{device.serial}", "pad": "'.encode()
    return head + b"x" * (size - len(head) - 2) + b'"}'


def test_a_body_over_64_kib_is_413_with_or_without_content_length(stack, devices):
    device = devices.empty
    for answer in (
        stack.call("/v1/verify", device, {"serial": device.serial, "pad": "x" * 65_536}),
        _chunked(stack, device, _body_of(device, 80_000)),
    ):
        assert answer.status_code == 413
        assert answer.json()["error"]["code"] == "too_large"
    assert _chunked(stack, device, _body_of(device, 65_536)).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/verify"), ("PUT", "/v1/enroll"), ("PUT", "/v1/status"), ("GET", "/v1/lock")],
)
def test_a_wrong_method_is_405(stack, devices, method, path):
    answer = requests.request(
        method,
        stack.connector_url + path,
        headers={"Authorization": "Bearer x"},
        verify=str(stack.ca_path),
        timeout=10,
    )
    assert answer.status_code == 405
    assert answer.json()["error"]["code"] == "method_not_allowed"


def test_an_unknown_path_is_404(stack, devices):
    answer = stack.call("/v1/unlock", devices.enrolled, {"serial": devices.enrolled.serial})
    assert (answer.status_code, answer.json()["error"]["code"]) == (404, "not_found")


def test_health_needs_no_signature(stack):
    answer = requests.get(stack.connector_url + "/healthz", verify=str(stack.ca_path), timeout=10)
    assert answer.status_code == 200
    assert answer.json()["status"] == "ok"


def test_a_renewed_certificate_is_served_without_a_restart(stack):
    """Last: it changes the connector's certificate (stack.ca_path follows it)."""
    url = urlsplit(stack.connector_url)
    served = peer_fingerprint(url.hostname, url.port, 5)
    assert served == pem_fingerprint((stack.workdir / "connector.crt").read_bytes())
    cert, key = self_signed_identity(["127.0.0.1", "localhost"])
    (stack.workdir / "connector.key").write_bytes(key)
    (stack.workdir / "connector.crt").write_bytes(cert)
    deadline = time.monotonic() + 20  # the front notices within seconds and reloads
    while peer_fingerprint(url.hostname, url.port, 5) != pem_fingerprint(cert):
        assert time.monotonic() < deadline, "the renewed certificate was never served"
        time.sleep(0.2)
    assert pem_fingerprint(cert) != served
    test_health_needs_no_signature(stack)  # trusted with the new certificate
