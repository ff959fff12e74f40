"""`python -m connector admin ...` against the generated configuration and the store of a running
stack (local engine): what an administrator does, and what the running connector then sees."""

from __future__ import annotations

import base64
import json

import pytest

from connector.config import load_config
from devkit.connector_e2e import (
    assert_error,
    open_sessions,
    open_store,
    sim_stats,
    verify,
)
from devkit.macro_client import key_text
from devkit.photos import write_frames
from devkit.stack import start_stack

pytestmark = pytest.mark.slow  # starts real processes

PERSON = "Grace Hopper"


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return write_frames(tmp_path_factory.mktemp("frames"))


@pytest.fixture(scope="module")
def stack(frames, tmp_path_factory):
    stack = start_stack(tmp_path_factory.mktemp("stack"), images=frames["grace_hopper"], devices=2)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(autouse=True)
def no_leaked_device_sessions(stack):
    yield
    assert open_sessions(stack.devices) == {}


def admin_ok(stack, *args: str) -> str:
    code, output = stack.admin(*args)
    assert code == 0, output
    return output


def printed_key(output: str) -> str:
    """The key on the line after "shown once"; it must appear nowhere else in the output."""
    lines = output.splitlines()
    key = lines[lines.index(next(x for x in lines if "shown once" in x)) + 1].strip()
    assert output.count(key) == 1
    return key


def decoded(key: str) -> bytes:
    raw = base64.urlsafe_b64decode(key + "=")
    assert len(key) == 43 and len(raw) == 32 and key_text(raw) == key
    return raw


def test_add_device_shows_its_key_once_and_keeps_it_only_encrypted_in_the_store(stack):
    output = admin_ok(
        stack,
        "add-device",
        "--serial",
        "NEWROOM1",
        "--host",
        "10.1.2.3",
        "--username",
        "faceid",
        "--password-ref",
        "env:NEWROOM1_PASSWORD",  # not set here: adding needs no password
        "--fingerprint",
        ":".join(["0F"] * 32),
    )
    key = decoded(printed_key(output))
    text = stack.config_path.read_text()
    assert key_text(key) not in text and key.hex() not in text
    assert load_config(stack.config_path).device("NEWROOM1") is not None
    db = (stack.workdir / "faceid.db").read_bytes()
    assert key not in db and key_text(key).encode() not in db and key.hex().encode() not in db
    store = open_store(stack)
    try:
        assert store.device_key("NEWROOM1") == key
    finally:
        store.close()

    code, output = stack.admin(
        "add-device", "--serial", "NEWROOM1", "--host", "10.1.2.4", "--username", "x",
        "--password-ref", "env:X", "--insecure",
    )  # fmt: skip
    assert code != 0 and "already" in output


def test_rotate_key_takes_effect_at_once_and_keeps_the_enrollments(stack, frames):
    device = stack.devices[1]
    admin_ok(
        stack, "enroll", "--serial", device.serial, "--person", PERSON,
        "--image", str(frames["grace_hopper"]),
    )  # fmt: skip
    old = device.key
    new = decoded(printed_key(admin_ok(stack, "rotate-key", "--serial", device.serial)))
    assert new != old
    refused = stack.call("/v1/verify", device, {"serial": device.serial})
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "unauthorized")
    device.key = new
    assert verify(stack, device)["person"] == PERSON  # no restart, the photo kept
    stack.call("/v1/lock", device, {"serial": device.serial})
    admin_ok(stack, "remove-person", "--serial", device.serial, "--person", PERSON)
    code, output = stack.admin("rotate-key", "--serial", "NOSUCHROOM")
    assert code == 1 and "No device NOSUCHROOM" in output


def test_enroll_from_a_file_reaches_the_running_connector_until_the_person_is_removed(
    stack, frames
):
    device = stack.devices[0]
    assert_error(verify(stack, device), "not_enrolled")
    output = admin_ok(
        stack,
        "enroll",
        "--serial",
        device.serial,
        "--person",
        PERSON,
        "--image",
        str(frames["grace_hopper"]),
    )
    assert "enrolled: Photo saved for Grace Hopper." in output
    assert admin_ok(stack, "people", "--serial", device.serial).startswith(f"{PERSON}\t1 photo(s)")
    assert verify(stack, device)["person"] == PERSON

    assert f"Removed {PERSON}" in admin_ok(
        stack, "remove-person", "--serial", device.serial, "--person", PERSON
    )
    assert admin_ok(stack, "people", "--serial", device.serial) == ""
    assert_error(verify(stack, device), "not_enrolled")
    code, output = stack.admin("remove-person", "--serial", device.serial, "--person", PERSON)
    assert code == 1 and "No person" in output


@pytest.mark.parametrize(
    ("serial", "image", "message"),
    [
        ("SIM0001", "no_face", "refused: No face found"),
        ("SIM0001", "missing.jpg", "Cannot read"),
        ("NOSUCHROOM", "grace_hopper", "No device NOSUCHROOM"),
    ],
)
def test_enroll_refuses_a_bad_picture_or_an_unknown_device(stack, frames, serial, image, message):
    path = frames.get(image) or frames["grace_hopper"].parent / image
    code, output = stack.admin(
        "enroll", "--serial", serial, "--person", PERSON, "--image", str(path)
    )
    assert code == 1 and message in output
    store = open_store(stack)
    try:
        assert store.people(serial) == []
    finally:
        store.close()


def test_remove_device_drops_it_from_the_file_and_forgets_its_people(stack, frames):
    admin_ok(
        stack, "add-device", "--serial", "GONEROOM", "--host", "10.9.9.9", "--username", "x",
        "--password-ref", "env:GONEROOM_PASSWORD", "--insecure",
    )  # fmt: skip
    admin_ok(
        stack, "enroll", "--serial", "GONEROOM", "--person", PERSON,
        "--image", str(frames["grace_hopper"]),
    )  # fmt: skip
    assert "removed" in admin_ok(stack, "remove-device", "--serial", "GONEROOM")
    assert load_config(stack.config_path).device("GONEROOM") is None
    store = open_store(stack)
    try:
        assert store.people("GONEROOM") == []
    finally:
        store.close()


def test_audit_lists_requests_newest_first_with_their_request_id(stack):
    device = stack.devices[1]
    answers = [
        stack.call("/v1/verify", device, {"serial": device.serial}, nonce=f"audit-{i:012d}")
        for i in range(2)
    ]
    output = admin_ok(stack, "audit", "--serial", device.serial, "--json", "--limit", "2")
    entries = [json.loads(line) for line in output.splitlines()]
    assert [e["request_id"] for e in entries] == [
        a.headers["X-Request-Id"] for a in reversed(answers)
    ]
    assert {(e["action"], e["outcome"], e["code"]) for e in entries} == {
        ("verify", "error", "not_enrolled")
    }
    assert all(len(line) < 1000 for line in output.splitlines())  # facts, never an image


def test_test_device_reports_the_snapshot_and_the_certificate_to_pin(stack):
    device = stack.devices[1]
    before = sim_stats(device)
    report = json.loads(admin_ok(stack, "test-device", "--serial", device.serial))
    assert (report["width"], report["height"]) == (1920, 1080)
    assert report["certificate_sha256"] == device.fingerprint
    assert report["tls_policy"] == "pinned"
    after = sim_stats(device)
    assert after["signins"] - before["signins"] == after["signouts"] - before["signouts"] == 1
    code, output = stack.admin("test-device", "--serial", "NOSUCHROOM")
    assert code == 1 and "No device NOSUCHROOM" in output
