"""The run's leak scan (tests/conftest.py, devkit/secrets_used.py) finds what it must and only that,
and it fails a run for real: an inner pytest run plants secrets in a child process's output, a
test's captured output, the environment and a log file, and must fail naming each."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import textwrap

import pytest

from devkit.fakes.google_token import ServiceAccountKey
from devkit.procs import REPO, ServerProcess
from devkit.secrets_used import (
    SHAPES,
    TALLY,
    Finding,
    redact,
    register,
    register_environment,
    registered,
    scan,
)


def planted(prefix: str) -> str:
    return f"{prefix}-{secrets.token_urlsafe(24)}"


def test_a_registered_secret_is_found_on_its_line_and_named_by_kind_only():
    secret = planted("tok")
    register("planted token", secret)
    log = f"starting\nrequest ok\ncalling with {secret} now\n"
    [finding] = scan("connector stderr", log)
    assert finding == Finding("connector stderr", 3, "planted token")
    assert secret not in str(finding)


def test_binary_keys_are_found_in_base64_and_hex():
    key = secrets.token_bytes(32)
    register("planted store key", key)
    for form in (base64.b64encode(key).decode(), base64.urlsafe_b64encode(key).decode(), key.hex()):
        assert [f.kind for f in scan("log", f"key {form}")] == ["planted store key"]


def test_a_private_key_is_found_from_its_head_or_middle_even_json_escaped():
    private_pem = ServiceAccountKey.generate().private_pem  # registered where the fake makes it
    body = private_pem.splitlines()[1:-1]
    for line in (body[0], body[len(body) // 2]):
        assert [f.kind for f in scan("log", f"x {line} y")] == ["Google private key (fake_google)"]
    escaped = json.dumps({"private_key": private_pem})
    assert {f.kind for f in scan("log", escaped)} == {
        "Google private key (fake_google)",
        "PEM private key",
    }


def test_a_text_read_before_is_read_again_for_later_secrets_only():
    early, late = planted("early"), planted("late")
    register("planted early", early)
    size = registered()
    register("planted late", late)
    text = f"{early}\n{late}\nAuthorization: Bearer {planted('shape')}\n"
    assert scan("log", text, since=size, shapes=False) == [Finding("log", 2, "planted late")]


def test_values_too_short_to_tell_from_ordinary_text_are_not_registered():
    register("planted short", "pw-1234")
    assert scan("log", "password check for pw-1234 done") == []


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (
            "POST /api Subscriptionkey: 3f9a81c2d4e5f60718293a4b5c6d7e8f",
            "Subscriptionkey header value",
        ),
        ('{"subscriptionkey": "3f9a81c2d4e5f607"}', "Subscriptionkey header value"),
        ("Authorization: Bearer Zm9vYmFyYmF6cXV4LXRva2VuLTEy", "Authorization Bearer value"),
        ("'Authorization': 'Bearer ya29.a0AfH6SMBx-3kq'", "Authorization Bearer value"),
        ("username=admin&password=Hunter2-sim&remember=1", "password value"),
        ('{"username": "admin", "password": "s3cret-pw"}', "password value"),
        ('password = "plain-text-9"', "password value"),
        ("-----BEGIN PRIVATE KEY-----", "PEM private key"),
        ("token eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ", "signed JWT"),
        ("got ya29.c.b0AXv0zTPx8Wk3-abcdefghij", "Google access token"),
    ],
)
def test_credential_shapes_are_found_without_the_registry(line, kind):
    assert kind in {shape.kind for shape in SHAPES}
    assert scan("log", f"ok\n{line}\n") == [Finding("log", 2, kind)]


@pytest.mark.parametrize(
    "line",
    [
        'password = "env:FACEID_DEVICE_PASSWORD"',  # a reference, the documented way
        '{"password": "file:/etc/faceid/secrets/room1"}',
        "password=***",
        "password=<redacted>",
        "    access = DeviceAccess(host, user, password=password)",  # traceback source lines
        "    headers = {'Subscriptionkey': self.key}",
        "    form = {'username': USER, 'password': PASSWORD}",
        'headers["Authorization"] = f"Bearer {token}"',
        "the macro sends Authorization: Bearer <device token>",
        "devices[0].password: environment variable X is not set",
        "Subscriptionkey refused by MXFace (401)",
    ],
)
def test_references_placeholders_and_code_are_not_credentials(line):
    assert scan("log", line) == []


def test_redact_replaces_every_secret_by_its_kind():
    secret = planted("tok")
    register("planted token", secret)
    text = f"a {secret} b\nAuthorization: Bearer {planted('other')}\n"
    shown = redact(text)
    assert shown == "a <planted token> b\nAuthorization: Bearer <Authorization Bearer value>\n"


def test_secret_named_variables_the_tests_set_are_registered_and_others_are_not():
    password, token, inherited = planted("pw"), planted("tok"), planted("ci")
    env = {
        "ROOM_PASSWORD": password,
        "SIM_ACCOUNT": f"admin:{token}",
        "SECRET_MANAGER_EMULATOR_HOST": "127.0.0.1:65001",  # a place, not a secret
        "MXFACE_KEY_SECRET": "projects/p/secrets/mxface-key/versions/latest",  # a reference
        "FACE_ENGINE": "mxface-engine-name",  # not named like a secret
        "SA_KEY": str(REPO / "pyproject.toml"),  # a file holding one, by its path
        "CI_JOB_TOKEN": inherited,  # the run's own environment, not set by a test
    }
    register_environment(env, baseline={"CI_JOB_TOKEN": inherited})
    text = "\n".join([password, token, *list(env.values())[2:]])
    assert [(f.line, f.kind) for f in scan("log", text)] == [
        (1, "environment variable ROOM_PASSWORD"),
        (2, "environment variable SIM_ACCOUNT"),
    ]


@pytest.mark.slow
def test_every_line_a_child_process_prints_is_read():
    lines, scanned = TALLY.lines.get("child processes", 0), TALLY.scanned
    code = "for i in range(500): print('line', i)"
    with ServerProcess([sys.executable, "-c", code]).start() as proc:
        proc.wait_line(r"^line 499$")
    assert TALLY.scanned >= scanned + 1
    assert TALLY.lines["child processes"] - lines >= 500


INNER_TESTS = '''
import json, logging, os, secrets, sys
from pathlib import Path

from devkit.fakes.webex import FakeWebex
from devkit.procs import ServerProcess
from devkit.secrets_used import register


def keep(name, value):
    """What was planted, for the outer test to check the output never shows it."""
    path = Path(os.environ["PLANTED_FILE"])
    known = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**known, name: value}))


def test_child_prints_the_bot_token():
    with FakeWebex() as webex:
        keep("webex", webex.token)
        code = "import sys; print('posting with', sys.argv[1])"
        with ServerProcess([sys.executable, "-c", code, webex.token]).start() as proc:
            proc.wait_line("posting")


def test_prints_a_bearer_header():
    value = secrets.token_urlsafe(24)
    keep("bearer", value)
    print("Authorization: Bearer " + value)


def test_logs_a_token_it_set_in_the_environment(monkeypatch):
    value = secrets.token_urlsafe(24)
    keep("env", value)
    monkeypatch.setenv("PLANTED_TOKEN", value)
    logging.getLogger("inner").warning("calling with %s", value)


def test_writes_a_registered_secret_to_a_log_file(tmp_path):
    value = secrets.token_urlsafe(24)
    keep("file", value)
    register("planted key", value)
    (tmp_path / "app.log").write_text("started\\nkey " + value + "\\n")


def test_clean():
    code = "print('a'); print('b'); print('c')"
    with ServerProcess([sys.executable, "-c", code]).start() as proc:
        proc.wait_line("^c$")
    print("nothing to hide")
'''


def run_inner(tmp_path, tests: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run `tests` in a pytest of their own with this scan; (exit code, everything it printed).
    Log files it leaves are removed: they are not this run's to scan."""
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(tests))
    plugin = ["-p", "tests.conftest", "-p", "no:cacheprovider"]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", *plugin, f"--basetemp={tmp_path / 'base'}", "-q"],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        for log in (tmp_path / "base").rglob("*.log"):
            log.unlink()
    return done.returncode, done.stdout + done.stderr


@pytest.mark.slow
def test_planted_secrets_fail_their_tests_and_the_run_without_being_shown(tmp_path):
    plants = tmp_path / "planted.json"
    code, output = run_inner(tmp_path, INNER_TESTS, {"PLANTED_FILE": str(plants)})
    assert code == 1, output
    assert "3 failed, 2 passed" in output
    for expected in [
        "test_inner.py::test_child_prints_the_bot_token (call)",
        "python (pid ",
        "stdout, line 1: Webex bot token (FakeWebex)",
        "test_inner.py::test_prints_a_bearer_header (call)",
        "captured stdout call of test_inner.py::test_prints_a_bearer_header, line 1: "
        "Authorization Bearer value",
        "captured log call of test_inner.py::test_logs_a_token_it_set_in_the_environment, "
        "line 1: environment variable PLANTED_TOKEN",
        "secret leak scan failed",
        "app.log, line 2: planted key",
    ]:
        assert expected in output, output
    values = json.loads(plants.read_text())
    assert set(values) == {"webex", "bearer", "env", "file"}
    assert not [name for name, value in values.items() if value in output]


SILENT_PROCESSES = """
import sys
from devkit.procs import ServerProcess


def test_starts_processes_that_print_nothing():
    for _ in range(5):
        ServerProcess([sys.executable, "-c", "pass"]).start().wait(30)
"""


@pytest.mark.slow
def test_a_run_that_read_no_line_from_its_processes_fails(tmp_path):
    code, output = run_inner(tmp_path, SILENT_PROCESSES)
    assert code == 1, output
    assert "1 passed" in output
    assert "5 child processes but 0 lines read from them" in output
