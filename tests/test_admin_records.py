"""`python -m connector admin` on the store's records, in-process (connector/admin/records.py): a
real configuration file and store, no process and no function (an enrollment reaches a closed
loopback port). unlock-lockout, people and audit (ISO 8601 times, --json, an unknown serial),
the operating-system user each admin action is audited with, and logs on stderr, results on
stdout. tests/test_connector_admin.py runs the same commands against a running stack."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from faceid_core.logs import log

from connector.__main__ import main
from connector.admin.common import OPERATOR_MAX_LEN, operator
from connector.config import load_config
from connector.enrollment import EnrollOutcome, audit_enrollment, enroll_image
from connector.lockout import Lockout
from connector.memory import MATCH
from connector.store import LockoutState, Store
from connector.times import iso_time
from tests.support.connector_config import BASE
from tests.support.memory_runtime import PICTURE, REQUEST_ID, SERIALS, Rig

SERIAL, OTHER = SERIALS
OPERATOR = "ada-admin"
GRACE = "Grace Hopper"


def _closed_port() -> int:
    """A loopback port nobody listens on: the function is unreachable, at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FACEID_TEST_STORE_KEY", os.urandom(32).hex())
    monkeypatch.setenv("LOGNAME", OPERATOR)  # the operator getpass reports
    monkeypatch.delenv("SUDO_USER", raising=False)
    devices = "".join(
        f'\n[[devices]]\nserial = "{serial}"\nhost = "127.0.0.{i + 1}"\nusername = "faceid"\n'
        'password = "env:UNUSED"\ntls = { insecure = true }\n'
        for i, serial in enumerate(SERIALS)
    )
    function = f'url = "http://127.0.0.1:{_closed_port()}/verify_faces"\nauth = "none"\n'
    text = BASE.replace(
        'url = "https://europe-west1-p.cloudfunctions.net/verify_faces"\n', function
    )
    path = tmp_path / "faceid.toml"
    path.write_text(text + devices)
    return path


@pytest.fixture
def store(config_path: Path) -> Any:
    config = load_config(config_path)
    opened = Store.open(config.store.path, config.store.resolve_key())
    yield opened
    opened.close()


def admin(
    capsys: pytest.CaptureFixture[str], config_path: Path, *args: str
) -> tuple[int, str, str]:
    """Run `admin ARGS` in-process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = main(["--config", str(config_path), "admin", *args])
    out, err = capsys.readouterr()
    return code, out, err


def fail(store: Store, config_path: Path, times: int, serial: str = SERIAL) -> None:
    lockout = Lockout(store, load_config(config_path).policy)
    for _ in range(times):
        gate = lockout.begin(serial, lease_s=10)
        lockout.finish(serial, gate, "failure")


def enroll(store: Store, person: str, serial: str = SERIAL, now: float = 1_800_000_000.0) -> None:
    store.add_reference(serial, person, PICTURE, now=now)


# --- unlock-lockout -----------------------------------------------------------------------------


def test_unlock_lockout_ends_the_lockout_resets_the_failures_and_audits_the_operator(
    capsys, config_path, store
):
    fail(store, config_path, 5)  # max_failures: locked for lockout_base_s (30 s)
    code, out, err = admin(capsys, config_path, "unlock-lockout", "--serial", SERIAL)
    assert code == 0, err
    assert out.startswith(f"Lockout of {SERIAL} ended (it had 5 failures, ")
    left = int(out.rsplit(", ", 1)[1].split(" s left")[0])
    assert 0 < left <= 30
    assert store.lockout_state(SERIAL) == LockoutState()
    entry = store.audit(limit=1)[0]
    assert (entry.action, entry.outcome, entry.serial, entry.actor) == (
        "unlock_lockout", "done", SERIAL, OPERATOR,
    )  # fmt: skip


def test_unlock_lockout_of_a_device_not_locked_out_says_so_and_forgets_its_failures(
    capsys, config_path, store
):
    fail(store, config_path, 2)
    code, out, _ = admin(capsys, config_path, "unlock-lockout", "--serial", SERIAL)
    assert (code, out) == (
        0,
        f"{SERIAL} was not locked out; its 2 failed attempts are forgotten.\n",
    )
    assert store.lockout_state(SERIAL) == LockoutState()
    code, out, _ = admin(capsys, config_path, "unlock-lockout", "--serial", SERIAL)
    assert (code, out) == (0, f"{SERIAL} was not locked out.\n")


@pytest.mark.parametrize("command", ["unlock-lockout", "people"])
def test_an_unconfigured_serial_is_an_error_and_changes_nothing(
    capsys, config_path, store, command
):
    code, out, err = admin(capsys, config_path, command, "--serial", "NOSUCHROOM")
    assert (code, out, err) == (1, "", "No device NOSUCHROOM in the configuration.\n")
    assert store.audit() == []


# --- people -------------------------------------------------------------------------------------


def test_people_lists_aligned_columns_with_iso_times(capsys, config_path, store):
    enroll(store, GRACE, now=1_796_132_707.0)
    enroll(store, "李小龍", now=1_796_132_708.0)  # wide characters keep the columns straight
    enroll(store, GRACE, now=1_796_219_107.0)
    code, out, _ = admin(capsys, config_path, "people", "--serial", SERIAL)
    assert code == 0
    assert out.splitlines() == [
        "PERSON        PHOTOS  ENROLLED                   LAST PHOTO",
        "Grace Hopper  2       2026-12-01T13:45:07+00:00  2026-12-02T13:45:07+00:00",
        "李小龍        1       2026-12-01T13:45:08+00:00  2026-12-01T13:45:08+00:00",
    ]


def test_people_json_is_one_object_per_line_with_iso_times(capsys, config_path, store):
    enroll(store, GRACE, now=1_796_132_707.0)
    code, out, _ = admin(capsys, config_path, "people", "--serial", SERIAL, "--json")
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == [
        {
            "name": GRACE,
            "references": 1,
            "created": "2026-12-01T13:45:07+00:00",
            "last_enrolled": "2026-12-01T13:45:07+00:00",
        }
    ]


def test_people_of_a_device_nobody_is_enrolled_on_prints_no_result(capsys, config_path, store):
    for extra in ([], ["--json"]):
        code, out, err = admin(capsys, config_path, "people", "--serial", SERIAL, *extra)
        assert (code, out, err) == (0, "", f"Nobody is enrolled on {SERIAL}.\n")


# --- audit --------------------------------------------------------------------------------------


def test_audit_shows_iso_times_and_the_operator_who_acted(capsys, config_path, store):
    store.record_audit(
        action="verify", outcome="match", serial=SERIAL, person=GRACE, score=0.97312,
        request_id=REQUEST_ID, time=1_796_132_707.0,
    )  # fmt: skip
    enroll(store, GRACE)
    admin(capsys, config_path, "remove-person", "--serial", SERIAL, "--person", GRACE)
    code, out, _ = admin(capsys, config_path, "audit")
    assert code == 0
    header, removal, request = out.splitlines()
    assert header.split() == [
        "TIME", "SERIAL", "ACTION", "OUTCOME", "CODE", "PERSON", "SCORE", "BY", "REQUEST",
    ]  # fmt: skip
    assert removal.split()[1:] == [SERIAL, "remove_person", "done", "Grace", "Hopper", OPERATOR,
                                   removal.split()[-1]]  # fmt: skip
    assert request.split() == ["2026-12-01T13:45:07+00:00", SERIAL, "verify", "match", "Grace",
                               "Hopper", "0.973", REQUEST_ID]  # fmt: skip
    # The columns line up: every field starts where its heading does.
    assert (
        request.index(REQUEST_ID) == header.index("REQUEST") == removal.index(removal.split()[-1])
    )

    code, out, _ = admin(capsys, config_path, "audit", "--json", "--limit", "1")
    (entry,) = [json.loads(line) for line in out.splitlines()]
    assert (entry["action"], entry["person"], entry["actor"]) == ("remove_person", GRACE, OPERATOR)
    assert entry["time"].endswith("+00:00") and len(entry["time"]) == 25


def test_audit_of_a_removed_device_stays_readable_but_a_serial_never_seen_is_an_error(
    capsys, config_path, store
):
    store.record_audit(action="verify", outcome="error", code="not_enrolled", serial="GONEROOM")
    code, out, _ = admin(capsys, config_path, "audit", "--serial", "GONEROOM", "--json")
    assert code == 0 and json.loads(out)["serial"] == "GONEROOM"
    code, out, err = admin(capsys, config_path, "audit", "--serial", "NOSUCHROOM")
    assert (code, out, err) == (1, "", "No device NOSUCHROOM in the configuration.\n")
    code, out, err = admin(capsys, config_path, "audit", "--serial", OTHER)  # configured
    assert (code, out, err) == (0, "", f"No audit entries for {OTHER}.\n")


@pytest.mark.parametrize("limit", ["0", "-1", "ten", "10000001"])
def test_audit_limit_must_be_a_whole_number_from_one(capsys, config_path, limit):
    with pytest.raises(SystemExit) as exited:
        main(["--config", str(config_path), "admin", "audit", "--limit", limit])
    assert exited.value.code == 2
    assert "--limit" in capsys.readouterr().err


def test_times_are_iso_8601_with_the_utc_offset():
    assert iso_time(0) == "1970-01-01T00:00:00+00:00"
    assert iso_time(1_796_132_707.9) == "2026-12-01T13:45:07+00:00"


# --- the operator in the audit, logs on stderr --------------------------------------------------


def test_remove_person_is_audited_with_the_operator_and_a_missing_person_is_not(
    capsys, config_path, store
):
    enroll(store, GRACE)
    code, out, _ = admin(
        capsys, config_path, "remove-person", "--serial", SERIAL, "--person", GRACE
    )
    assert (code, out) == (0, f"Removed {GRACE} from {SERIAL}.\n")
    code, _, err = admin(
        capsys, config_path, "remove-person", "--serial", SERIAL, "--person", GRACE
    )
    assert (code, err) == (1, f"No person {GRACE!r} on {SERIAL}.\n")
    (entry,) = store.audit()
    assert (entry.action, entry.person, entry.actor) == ("remove_person", GRACE, OPERATOR)


def test_admin_enroll_logs_on_stderr_prints_only_its_result_and_audits_the_operator(
    capsys, config_path, store, tmp_path
):
    image = tmp_path / "grace.jpg"
    image.write_bytes(PICTURE)
    code, out, err = admin(
        capsys, config_path, "enroll", "--serial", SERIAL, "--person", GRACE, "--image", str(image)
    )
    assert code == 1
    assert out.startswith("error: ") and len(out.splitlines()) == 1  # the function is down
    logged = [json.loads(line) for line in err.splitlines()]
    assert {"enroll error"} <= {line["message"] for line in logged}
    (entry,) = store.audit()
    assert (entry.action, entry.outcome, entry.code, entry.actor) == (
        "enroll", "error", "engine_unavailable", OPERATOR,
    )  # fmt: skip
    assert all(line["trace"] == entry.request_id for line in logged)  # they join up


def test_after_an_admin_command_the_log_goes_to_stdout_again(capsys, config_path):
    admin(capsys, config_path, "audit")
    log("INFO", "served")
    logging.getLogger("urllib3").warning("a library's line")
    out, err = capsys.readouterr()
    assert [json.loads(line)["message"] for line in out.splitlines()] == [
        "served", "a library's line",
    ]  # fmt: skip
    assert err == ""


def test_an_enrollment_names_the_administrator_who_asked_and_none_from_a_device(rig: Rig):
    rig.function.script(MATCH)  # the crop matches itself
    assert rig.enroll(GRACE).result == "enrolled"  # at the device: the first person
    rig.function.script(MATCH)
    enroll_image(
        rig.rt, rig.serial, GRACE, PICTURE, REQUEST_ID, only_if_empty=False, actor=OPERATOR
    )
    refused = EnrollOutcome("refused", "no_face", "Mallory")
    audit_enrollment(rig.rt, REQUEST_ID, rig.serial, "Mallory", refused, actor=OPERATOR)
    audit_enrollment(rig.rt, REQUEST_ID, rig.serial, "Mallory", refused)  # a device's request
    assert [(e.person, e.actor) for e in reversed(rig.store.audit(serial=rig.serial))] == [
        (GRACE, None),
        (GRACE, OPERATOR),
        ("Mallory", OPERATOR),
        ("Mallory", None),
    ]


def test_the_operator_run_with_sudo_names_who_ran_sudo_too(monkeypatch):
    monkeypatch.setenv("LOGNAME", "faceid")  # sudo -u faceid sets it to the service user
    monkeypatch.setenv("SUDO_USER", "ada")
    assert operator() == "ada (sudo as faceid)"
    monkeypatch.setenv("SUDO_USER", "faceid")
    assert operator() == "faceid"
    monkeypatch.delenv("SUDO_USER")
    monkeypatch.setenv("LOGNAME", "evil\x1b[2Jname" + "x" * 100)  # never a terminal's command
    assert operator() == ("evil?[2Jname" + "x" * 100)[:OPERATOR_MAX_LEN]
