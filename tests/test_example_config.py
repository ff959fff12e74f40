"""The shipped example configuration (infra/connector/faceid.example.toml): it shows every field
of README's table, its commented-out devices are valid blocks, and with only its install folders
moved it passes `admin check-config` and the connector starts on it."""

from __future__ import annotations

import base64
import os
import re
import secrets
import sys
from pathlib import Path

import pytest
import requests

from connector.config import load_config
from connector.config.schema import SECTIONS, settings
from devkit.procs import REPO, ServerProcess, free_port
from devkit.secrets_used import register

EXAMPLE = REPO / "infra" / "connector" / "faceid.example.toml"
HEADER_RE = re.compile(r"^\[\[?\s*(\w+)\s*\]\]?")
FIELD_RE = re.compile(r"^(\w+)\s*=")
#: The example's function; the copy started here points at a closed local port instead, so that
#: /healthz's probe of the function (and its ID token) stays on this machine.
EXAMPLE_FUNCTION_URL = "https://europe-west1-my-project.cloudfunctions.net/verify_faces"
DEVICE_BLOCK_RE = re.compile(r"^# \[\[devices\]\]\n(?:# .*\n)+", re.MULTILINE)


def uncommented(line: str) -> str:
    return line.lstrip("#").strip()


def fields_shown(text: str) -> set[tuple[str, str]]:
    """(section, key) of every `key = value` line of the file, commented out or not."""
    shown, section = set(), ""
    for line in text.splitlines():
        line = uncommented(line)
        if header := HEADER_RE.match(line):
            section = header.group(1)
        elif field := FIELD_RE.match(line):
            shown.add((section, field.group(1)))
    return shown


def test_the_example_shows_every_field_of_readmes_table():
    shown = fields_shown(EXAMPLE.read_text())
    declared = {(s.name, key) for s in SECTIONS for key, _ in settings(s.cls)}
    assert declared - shown == set()


def test_the_example_uses_file_references_for_its_secrets():
    text = EXAMPLE.read_text()
    references = re.findall(r'^#?\s*(?:key|password|bot_token) = "(\w+):', text, re.MULTILINE)
    assert references and set(references) == {"file"}


def test_the_examples_commented_devices_are_valid_blocks(tmp_path):
    text = EXAMPLE.read_text()
    blocks = [
        "\n".join(line[2:] for line in block.splitlines())
        for block in DEVICE_BLOCK_RE.findall(text)
    ]
    assert len(blocks) == 2
    webex = '[webex]\nbot_token = "env:T"\nroom_id = "R"\n'  # the second names its own room
    path = tmp_path / "faceid.toml"
    path.write_text(text + "\n" + "\n\n".join(blocks) + "\n" + webex)
    first, second = load_config(path).devices
    assert (first.serial, first.username, first.password) == (
        "FOC2401ABCD",
        "faceid",
        "file:/etc/faceid/secrets/device-password",
    )
    assert first.tls.fingerprint_sha256 == (
        "3f8a1b52c4d09e77216be348f05ca9128d64b73e05fac1299d4e63b8701a2cd5"
    )
    assert (second.username, second.name, second.tls.insecure) == ("faceid-lab", "Lab desk", True)
    assert second.password == "file:/etc/faceid/secrets/lab-desk-password"


def test_the_examples_commented_connector_urls_are_a_valid_list(tmp_path):
    text = EXAMPLE.read_text()
    block = re.search(r"^# connector_urls = \[\n(?:#   .*\n)+# \]\n", text, re.MULTILINE)
    assert block is not None
    uncommented_block = "\n".join(line[2:] for line in block[0].splitlines()) + "\n"
    path = tmp_path / "faceid.toml"
    path.write_text(text.replace(block[0], uncommented_block))
    assert load_config(path).provisioning.connector_urls == (
        "https://faceid-a.example.internal:8443",
        "https://faceid-b.example.internal:8443",
    )


def installed_copy(folder: Path, port: int) -> Path:
    """The example with /etc/faceid and /var/lib/faceid moved under `folder`, a free port, the
    function on a closed local port, and the secret files its references name (a fresh store key;
    the state folder is made by the store, as systemd's StateDirectory= would)."""
    text = EXAMPLE.read_text()
    text = text.replace("/etc/faceid", str(folder / "etc")).replace(
        "/var/lib/faceid", str(folder / "var")
    )
    text = re.sub(r"^port = 8443\b", f"port = {port}", text, flags=re.MULTILINE)
    assert EXAMPLE_FUNCTION_URL in text
    text = text.replace(EXAMPLE_FUNCTION_URL, f"http://127.0.0.1:{free_port()}/verify_faces")
    for target in set(re.findall(r'"file:([^"]+)"', text)):
        secret = base64.b64encode(os.urandom(32)).decode()
        if not target.endswith("store-key"):
            secret = secrets.token_urlsafe(18)
        register("example secret", secret)
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secret + "\n")
        path.chmod(0o600)
    copy = folder / "etc" / "faceid.toml"
    copy.write_text(text)
    return copy


@pytest.mark.slow
def test_the_example_passes_check_config_and_starts_as_it_is(tmp_path):
    port = free_port()
    config = installed_copy(tmp_path, port)
    nowhere = f"127.0.0.1:{free_port()}"
    env = {  # Google's credential search ends on this machine
        "GOOGLE_APPLICATION_CREDENTIALS": None,
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
        "GCE_METADATA_HOST": nowhere,
        "GCE_METADATA_IP": nowhere,
    }
    check = ServerProcess(
        [sys.executable, "-m", "connector", "--config", str(config), "admin", "check-config"],
        env=env,
    ).start()
    assert check.wait(60) == 0, check.stdout() + check.stderr()
    assert check.stdout() == "configuration OK: 0 devices\n"
    with ServerProcess(
        [sys.executable, "-m", "connector", "--config", str(config), "serve"],
        env=env,
        url=f"http://127.0.0.1:{port}",
    ).start() as connector:
        connector.wait_http(f"http://127.0.0.1:{port}/healthz", timeout_s=60)
        answer = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=30)
        assert answer.status_code == 200, answer.text
        health = answer.json()
        assert health["status"] == "degraded" and health["checks"]["store"] == "ok", health
