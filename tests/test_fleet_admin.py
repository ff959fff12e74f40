"""`python -m connector admin add-device | test-device | provision | rotate-key | remove-device`
as an administrator runs them, against a running admin_stack (local engine, real connector) and
simulated devices that speak the xAPI: each broken input refused with its fix, and each change
served by the running connector without a restart."""

from __future__ import annotations

import base64
import json
import secrets
import socket
import time
from collections.abc import Callable

import pytest

from connector.config import add_device, load_config
from connector.device import TlsPolicy
from devkit.connector_e2e import open_store, sim_stats, verify
from devkit.macro_client import key_text
from devkit.pushed_macro import device_key, reporter, reporting_runtime
from devkit.simulator import DeviceSimulator
from devkit.stack import SimDevice, Stack, connector_records
from tests.support.admin_commands import admin_ok

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("signed_out")]  # real processes

PERSON = "Grace Hopper"
NEW_SERIAL = "NEWROOM1"
NEW_PASSWORD = "web-" + secrets.token_urlsafe(12)
NEW_ADMIN_PASSWORD = "adm-" + secrets.token_urlsafe(12)


@pytest.fixture
def new_device(admin_frames):
    with DeviceSimulator(
        {"faceid": NEW_PASSWORD},
        str(admin_frames["grace_hopper"]),
        serial=NEW_SERIAL,
        admins={"admin": NEW_ADMIN_PASSWORD},
    ) as sim:
        yield sim
        assert sim.stats()["open_sessions"] == 0


@pytest.fixture
def password_file(tmp_path):
    path = tmp_path / "new-room.password"
    path.write_text(NEW_PASSWORD + "\n")
    path.chmod(0o600)
    return path


def printed_key(output: str) -> str:
    """The key on the line after "shown once"; it must appear nowhere else in the output."""
    lines = output.splitlines()
    key = lines[lines.index(next(x for x in lines if "shown once" in x)) + 1].strip()
    assert output.count(key) == 1
    return key


def eventually(check: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def reporting(admin_stack: Stack, device: SimDevice):
    """The device's macro runtime: the pushed macro reports in to the running connector, signed
    with the key provisioning wrote into it."""
    report = reporter(admin_stack.connector_url, str(admin_stack.ca_path), device.serial)
    return reporting_runtime(device.macros, report)


def provision_args(admin_stack: Stack, *args: str) -> tuple[str, ...]:
    return ("provision", *args, "--admin-password-ref", admin_stack.device_admin_ref)


# --- add-device --------------------------------------------------------------------------------


def test_add_device_checks_the_device_then_writes_it_and_the_running_connector_serves_it(
    admin_stack, new_device, password_file
):
    output = admin_ok(
        admin_stack,
        "add-device",
        "--host",
        new_device.host,
        "--username",
        "faceid",
        "--password-ref",
        f"file:{password_file}",
        "--name",
        "Room 1",
        "--yes",
        "--show-key",  # for a macro installed by hand; provision installs it otherwise
    )
    for check in ("certificate", "sign-in", "serial", "option key", "snapshot", "face"):
        assert f"✓ {check}" in output, output
    assert "fix: `admin provision` switches it on" in output  # HttpClient is Off on a new device
    key = base64.urlsafe_b64decode(printed_key(output) + "=")
    configured = load_config(admin_stack.config_path).device(NEW_SERIAL)
    assert configured is not None and configured.name == "Room 1"
    assert configured.tls == TlsPolicy(fingerprint_sha256=new_device.fingerprint.replace(":", ""))
    assert key_text(key) not in admin_stack.config_path.read_text()
    assert NEW_PASSWORD not in admin_stack.config_path.read_text()
    store = open_store(admin_stack)
    try:
        assert store.device_key(NEW_SERIAL) == key
        assert store.audit(limit=1, serial=NEW_SERIAL)[0].actor
    finally:
        store.close()
    device = SimDevice(
        NEW_SERIAL, key, None, new_device.url, new_device.fingerprint, "", new_device.ca_pem_path
    )

    # Watched in the log, not by asking: each refused request would count towards the
    # failed-authentication brake of this address.
    assert eventually(lambda: reloaded(admin_stack, "devices_added")), "no reload took the device"
    assert admin_stack.call(f"/v1/status?serial={NEW_SERIAL}", device).status_code == 200
    admin_ok(admin_stack, "remove-device", "--serial", NEW_SERIAL)
    assert eventually(lambda: reloaded(admin_stack, "devices_removed")), "no reload removed it"
    assert admin_stack.call(f"/v1/status?serial={NEW_SERIAL}", device).status_code == 401
    again = admin_ok(
        admin_stack, "add-device", "--host", new_device.host, "--username", "faceid",
        "--password-ref", f"file:{password_file}", "--fingerprint", new_device.fingerprint,
    )  # fmt: skip
    assert "shown once" not in again and "admin provision --serial NEWROOM1" in again
    admin_ok(admin_stack, "remove-device", "--serial", NEW_SERIAL)


def reloaded(admin_stack: Stack, change: str) -> bool:
    """The running connector logged a reload with NEW_SERIAL under `change`."""
    return any(
        r.get("message") == "configuration reloaded" and NEW_SERIAL in r.get(change, [])
        for r in connector_records(admin_stack)
    )


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


BROKEN = {
    "a secret reference that cannot be read": (
        {"--password-ref": "env:FACEID_TEST_NOT_SET_ANYWHERE"},
        {},
        2,
        "FACEID_TEST_NOT_SET_ANYWHERE",
    ),
    "a wrong password": ({"--password-ref": "file:WRONG"}, {}, 1, "fix: check the user name"),
    "no option key": ({}, {"no_option_key": True}, 1, "fix: install the Remote Monitoring"),
    "a pinned certificate that is not the device's": (
        {"--fingerprint": ":".join(["0F"] * 32)},
        {},
        1,
        "not the pinned one",
    ),
    "the serial of another device": (
        {"--serial": "OTHERROOM"},
        {},
        1,
        "is NEWROOM1, not OTHERROOM",
    ),
    "no device at the address": ({"--host": "CLOSED"}, {}, 1, "fix: check --host"),
    "a serial already configured": ({"--serial": "SIM0000"}, {}, 1, "already configured"),
    "no answer to the certificate question": ({"--yes": None}, {}, 1, "Pass --yes to pin it"),
}


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_add_device_refuses_each_broken_input_with_its_fix_and_writes_nothing(
    admin_stack, new_device, password_file, tmp_path, case
):
    changes, mode, code, said = BROKEN[case]
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password")
    new_device.set_mode(**mode)
    options: dict[str, str | None] = {
        "--host": new_device.host,
        "--username": "faceid",
        "--password-ref": f"file:{password_file}",
        "--yes": None,
    }
    for option, value in changes.items():
        if option == "--yes":
            del options[option]
            continue
        options[option] = {"file:WRONG": f"file:{wrong}", "CLOSED": closed_port()}.get(
            value or "", value
        )
    before = admin_stack.config_path.read_text()
    args = [part for option, value in options.items() for part in (option, value) if part]
    status, output = admin_stack.admin("add-device", *args)
    assert (status, said in output) == (code, True), output
    assert admin_stack.config_path.read_text() == before
    assert new_device.stats()["failed_logins"] <= 1  # a bad password is tried once, never again
    if case == "a secret reference that cannot be read":
        assert new_device.stats()["device_requests"] == 0  # stopped before contacting the device


# --- test-device -------------------------------------------------------------------------------


def test_test_device_shows_what_the_camera_sees_with_the_face_box_and_score(admin_stack, tmp_path):
    device = admin_stack.devices[1]
    before = sim_stats(device)
    frame = tmp_path / "frame.jpg"
    output = admin_ok(
        admin_stack, "test-device", "--serial", device.serial, "--save", str(frame), "--json"
    )
    (report,) = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert report["ok"] and report["serial"] == device.serial
    assert report["certificate_sha256"] == device.fingerprint
    ((_, _, w, h),) = [face["box"] for face in report["faces"]]
    assert w > 80 and h > 80 and 0 < report["faces"][0]["score"] <= 1
    assert frame.read_bytes()[:2] == b"\xff\xd8" and (frame.stat().st_mode & 0o777) == 0o600
    after = sim_stats(device)
    assert after["signins"] - before["signins"] == after["signouts"] - before["signouts"] == 1
    code, output = admin_stack.admin("test-device", "--serial", device.serial, "--save", str(frame))
    assert code == 2 and "cannot write the snapshot" in output  # never over an existing file
    human = admin_ok(admin_stack, "test-device", "--serial", device.serial)
    assert "✓ face" in human and "score" in human
    code, output = admin_stack.admin("test-device", "--serial", "NOSUCHROOM")
    assert code == 1 and "No device NOSUCHROOM" in output


# --- provision and rotate-key ------------------------------------------------------------------


def test_provision_pushes_the_macro_and_waits_until_it_reports_to_the_running_connector(
    admin_stack,
):
    device = admin_stack.devices[0]
    with reporting(admin_stack, device) as reported:
        output = admin_ok(admin_stack, *provision_args(admin_stack, "--serial", device.serial))
        again = admin_ok(admin_stack, *provision_args(admin_stack, "--serial", device.serial))
    assert "ok" in output and "reported in (" in output, output
    assert "config already right" in again and "CA kept" in again
    first, second = reported
    assert device_key(first) == device_key(second) == device.key  # the key is kept
    assert first["pushId"] != second["pushId"]
    configuration = device.configuration()
    assert configuration["HttpClient Mode"] == "On" and configuration["Macros Mode"] == "On"
    assert len(configuration["ca_certificates"]) == 1
    store = open_store(admin_stack)
    try:
        entries = store.audit(limit=10, serial=device.serial)
    finally:
        store.close()
    assert [e.action for e in entries if e.action == "provision"] == ["provision", "provision"]
    assert all(e.actor for e in entries if e.action == "provision")
    assert any(e.action == "macro_report" for e in entries)


def test_provision_all_shows_progress_then_a_table_naming_what_failed_and_why(admin_stack):
    good, down = admin_stack.devices
    down.control(down=True)
    try:
        with reporting(admin_stack, good):
            status, output = admin_stack.admin(*provision_args(admin_stack, "--all"))
    finally:
        down.control(down=False)
    assert status == 1, output
    lines = output.splitlines()
    header = next(line for line in lines if line.startswith("DEVICE"))
    assert header.split() == ["DEVICE", "RESULT", "DONE", "FAILED", "WHY"]
    assert any(line.startswith(good.serial) and " ok " in line for line in lines), output
    failed = next(line for line in lines if line.startswith(down.serial))
    assert (
        "FAILED" in failed and "identity" in failed and down.url.removeprefix("https://") in failed
    )
    assert "2/2" in output  # the progress bar's count
    with reporting(admin_stack, good):
        status, output = admin_stack.admin(
            *provision_args(admin_stack, "--serial", good.serial, "--json")
        )
    (answer,) = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert status == 0 and answer["ok"] is True


def test_rotate_key_provisions_the_new_key_and_keeps_the_enrollments(admin_stack, admin_frames):
    device = admin_stack.devices[1]
    admin_ok(
        admin_stack, "enroll", "--serial", device.serial, "--person", PERSON,
        "--image", str(admin_frames["grace_hopper"]),
    )  # fmt: skip
    old = device.key
    try:
        with reporting(admin_stack, device) as reported:
            admin_ok(
                admin_stack,
                "rotate-key",
                "--serial",
                device.serial,
                "--admin-password-ref",
                admin_stack.device_admin_ref,
            )
        (pushed,) = reported
        assert device_key(pushed) != old
        refused = admin_stack.call("/v1/verify", device, {"serial": device.serial})
        assert (refused.status_code, refused.json()["error"]["code"]) == (401, "unauthorized")
        device.key = device_key(pushed)
        assert verify(admin_stack, device)["person"] == PERSON  # no restart, the photo kept
        manual = admin_ok(admin_stack, "rotate-key", "--serial", device.serial, "--manual")
        device.key = base64.urlsafe_b64decode(printed_key(manual) + "=")
        assert admin_stack.call(f"/v1/status?serial={device.serial}", device).status_code == 200
    finally:
        admin_stack.call("/v1/lock", device, {"serial": device.serial})
        admin_ok(admin_stack, "remove-person", "--serial", device.serial, "--person", PERSON)
    code, output = admin_stack.admin("rotate-key", "--serial", "NOSUCHROOM", "--manual")
    assert code == 1 and "No device NOSUCHROOM" in output


def test_provision_sends_no_admin_password_to_a_device_whose_certificate_is_not_checked(
    admin_stack,
):
    device = admin_stack.devices[0]
    add_device(
        admin_stack.config_path,
        serial="LABDESK1",
        host=device.url.removeprefix("https://"),
        tls=TlsPolicy(insecure=True),
    )
    try:
        before = sim_stats(device)
        code, output = admin_stack.admin(*provision_args(admin_stack, "--serial", "LABDESK1"))
        assert code == 1 and "trust" in output and "--allow-insecure" in output
        after = sim_stats(device)
        assert (after["getxml_requests"], after["putxml_requests"]) == (
            before["getxml_requests"],
            before["putxml_requests"],
        )
        code, output = admin_stack.admin(
            *provision_args(admin_stack, "--serial", "LABDESK1", "--allow-insecure")
        )
        assert code == 1 and "is SIM0000, not LABDESK1" in output  # it went ahead, and stopped
    finally:
        admin_ok(admin_stack, "remove-device", "--serial", "LABDESK1")


def test_provision_without_a_terminal_or_a_password_reference_asks_for_the_reference(admin_stack):
    code, output = admin_stack.admin("provision", "--serial", admin_stack.devices[0].serial)
    assert code == 2 and "--admin-password-ref" in output


# --- remove-device -----------------------------------------------------------------------------


def test_remove_device_drops_it_from_the_file_and_forgets_its_people(admin_stack, admin_frames):
    add_device(
        admin_stack.config_path,
        serial="GONEROOM",
        host="10.9.9.9",
        username="x",
        password_ref="env:GONEROOM_PASSWORD",
        tls=TlsPolicy(insecure=True),
    )
    admin_ok(
        admin_stack, "enroll", "--serial", "GONEROOM", "--person", PERSON,
        "--image", str(admin_frames["grace_hopper"]),
    )  # fmt: skip
    assert "removed" in admin_ok(admin_stack, "remove-device", "--serial", "GONEROOM")
    assert load_config(admin_stack.config_path).device("GONEROOM") is None
    store = open_store(admin_stack)
    try:
        assert store.people("GONEROOM") == []
        assert store.audit(limit=1, serial="GONEROOM")[0].action == "remove_device"
    finally:
        store.close()
