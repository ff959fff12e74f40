"""`python -m connector admin ...` against the generated configuration and the store of a running
admin_stack (local engine): what an administrator does, and what the running connector then sees."""

from __future__ import annotations

import json
import sys

import pytest

from devkit.connector_e2e import (
    assert_error,
    open_store,
    verify,
)
from devkit.procs import ServerProcess
from tests.support.admin_commands import admin_ok

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("signed_out")]  # real processes

PERSON = "Grace Hopper"


def test_enroll_from_a_file_reaches_the_running_connector_until_the_person_is_removed(
    admin_stack, admin_frames
):
    device = admin_stack.devices[0]
    assert_error(verify(admin_stack, device), "not_enrolled")
    output = admin_ok(
        admin_stack,
        "enroll",
        "--serial",
        device.serial,
        "--person",
        PERSON,
        "--image",
        str(admin_frames["grace_hopper"]),
    )
    assert "enrolled: Photo saved for Grace Hopper." in output
    header, row = admin_ok(admin_stack, "people", "--serial", device.serial).splitlines()
    assert header.split()[:2] == ["PERSON", "PHOTOS"] and row.split()[:3] == [
        "Grace",
        "Hopper",
        "1",
    ]
    assert verify(admin_stack, device)["person"] == PERSON

    assert f"Removed {PERSON}" in admin_ok(
        admin_stack, "remove-person", "--serial", device.serial, "--person", PERSON
    )
    assert admin_ok(admin_stack, "people", "--serial", device.serial) == (
        f"Nobody is enrolled on {device.serial}.\n"
    )
    assert_error(verify(admin_stack, device), "not_enrolled")
    code, output = admin_stack.admin("remove-person", "--serial", device.serial, "--person", PERSON)
    assert code == 1 and "No person" in output


@pytest.mark.parametrize(
    ("serial", "image", "message"),
    [
        ("SIM0001", "no_face", "refused: No face found"),
        ("SIM0001", "missing.jpg", "Cannot read"),
        ("NOSUCHROOM", "grace_hopper", "No device NOSUCHROOM"),
    ],
)
def test_enroll_refuses_a_bad_picture_or_an_unknown_device(
    admin_stack, admin_frames, serial, image, message
):
    path = admin_frames.get(image) or admin_frames["grace_hopper"].parent / image
    code, output = admin_stack.admin(
        "enroll", "--serial", serial, "--person", PERSON, "--image", str(path)
    )
    assert code == 1 and message in output
    store = open_store(admin_stack)
    try:
        assert store.people(serial) == []
    finally:
        store.close()


def test_audit_lists_requests_newest_first_with_their_request_id(admin_stack):
    device = admin_stack.devices[1]
    answers = [
        admin_stack.call("/v1/verify", device, {"serial": device.serial}, nonce=f"audit-{i:012d}")
        for i in range(2)
    ]
    output = admin_ok(admin_stack, "audit", "--serial", device.serial, "--json", "--limit", "2")
    entries = [json.loads(line) for line in output.splitlines()]
    assert [e["request_id"] for e in entries] == [
        a.headers["X-Request-Id"] for a in reversed(answers)
    ]
    assert {(e["action"], e["outcome"], e["code"]) for e in entries} == {
        ("verify", "error", "not_enrolled")
    }
    assert all(len(line) < 1000 for line in output.splitlines())  # facts, never an image


def admin_streams(admin_stack, *args: str, operator: str) -> tuple[int, str, str]:
    """Like admin_stack.admin, run by the OS user `operator`, with stdout and stderr apart."""
    command = ServerProcess(
        [
            sys.executable,
            "-m",
            "connector",
            "--config",
            str(admin_stack.config_path),
            "admin",
            *args,
        ],
        # The name getpass reports; not run with sudo.
        env={**admin_stack.connector.env, "LOGNAME": operator, "SUDO_USER": None},
    ).start()
    code = command.wait(120)
    return code, command.stdout(), command.stderr()


def test_admin_prints_only_results_on_stdout_logs_on_stderr_and_audits_the_operator(
    admin_stack, admin_frames
):
    serial = admin_stack.devices[0].serial
    code, out, err = admin_streams(
        admin_stack, "enroll", "--serial", serial, "--person", PERSON,
        "--image", str(admin_frames["grace_hopper"]), operator="ops-admin",
    )  # fmt: skip
    assert (code, out) == (0, f"enrolled: Photo saved for {PERSON}.\n")
    logged = [json.loads(line) for line in err.splitlines()]  # every line a structured record
    assert "enroll enrolled" in {line["message"] for line in logged}

    code, out, _ = admin_streams(
        admin_stack, "remove-person", "--serial", serial, "--person", PERSON, operator="ops-admin"
    )
    assert code == 0
    code, out, _ = admin_streams(
        admin_stack, "audit", "--serial", serial, "--limit", "2", "--json", operator="someone-else"
    )
    removal, enrollment = (json.loads(line) for line in out.splitlines())  # parsed as it is
    assert (removal["action"], removal["actor"]) == ("remove_person", "ops-admin")
    assert (enrollment["action"], enrollment["outcome"], enrollment["actor"]) == (
        "enroll", "enrolled", "ops-admin",
    )  # fmt: skip
    assert enrollment["request_id"] == next(line["trace"] for line in logged)  # joined up
