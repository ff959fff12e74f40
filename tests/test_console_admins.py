"""`admin add-admin`, `admin remove-admin` and `admin admins` (connector/admin/consoleadmins.py),
run in this process as `python -m connector` runs them: the password from a reference or typed
twice, never shorter than 12 characters; a removed administrator's sessions end; each change is
audited with the operator's name."""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path

import pytest

from connector.__main__ import main
from connector.admin import Exit
from connector.admin.common import operator
from connector.config import load_config
from connector.console.auth import HASHER
from connector.store import Store
from tests.support.connector_config import BASE, write

KEY = bytes(range(32))
PASSWORD = "a long enough password"


@pytest.fixture
def config(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FACEID_TEST_STORE_KEY", KEY.hex())
    monkeypatch.setenv("CONSOLE_PW", PASSWORD)
    return write(tmp_path, BASE + '[admin_ui]\nhost = "127.0.0.1"\n')


def admin(config: Path, *args: str) -> int:
    return main(["--config", str(config), "admin", *args])


def opened(config: Path) -> Store:
    return Store.open(load_config(config).store.path, KEY)


def test_an_administrator_added_from_a_reference_is_listed_and_can_log_in(config, capsys):
    assert admin(config, "add-admin", "--name", "alice", "--password-ref", "env:CONSOLE_PW") == 0
    assert capsys.readouterr().out == "Administrator alice added.\n"
    store = opened(config)
    try:
        stored = store.admin_hash("alice")
        assert stored is not None and stored.startswith("$argon2id$")
        assert HASHER.verify(stored, PASSWORD)
        [entry] = store.audit()
        assert (entry.action, entry.outcome, entry.person, entry.actor) == (
            "add_admin",
            "done",
            "alice",
            operator(),
        )
    finally:
        store.close()
    assert admin(config, "admins") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ADMIN", "CREATED"] and lines[1].startswith("alice  20")
    assert admin(config, "admins", "--json") == 0
    record = json.loads(capsys.readouterr().out)
    assert record["name"] == "alice" and record["created"].endswith("+00:00")


def test_a_name_taken_is_refused(config, capsys):
    assert admin(config, "add-admin", "--name", "alice", "--password-ref", "env:CONSOLE_PW") == 0
    again = admin(config, "add-admin", "--name", "alice", "--password-ref", "env:CONSOLE_PW")
    assert again == Exit.NOT_DONE
    assert "error (admin_exists): There is already an administrator 'alice'" in (
        capsys.readouterr().err
    )


def test_a_short_password_or_a_bad_name_is_refused_before_anything_is_written(
    config, capsys, monkeypatch
):
    monkeypatch.setenv("SHORT_PW", "eleven char")
    assert admin(config, "add-admin", "--name", "alice", "--password-ref", "env:SHORT_PW") == 2
    assert "at least 12 characters" in capsys.readouterr().err
    assert admin(config, "add-admin", "--name", "<b>", "--password-ref", "env:CONSOLE_PW") == 2
    assert "lower-case letters" in capsys.readouterr().err
    store = opened(config)
    try:
        assert store.admins() == [] and store.audit() == []
    finally:
        store.close()


def test_without_a_reference_the_password_is_asked_twice_at_a_terminal(config, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    typed = iter([PASSWORD, PASSWORD + "x"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt: next(typed))
    assert admin(config, "add-admin", "--name", "alice") == 2
    assert "the two passwords differ" in capsys.readouterr().err
    typed = iter([PASSWORD, PASSWORD])
    assert admin(config, "add-admin", "--name", "alice") == 0


def test_without_a_reference_or_a_terminal_the_command_says_what_to_give(config, capsys):
    assert admin(config, "add-admin", "--name", "alice") == 2
    assert "give --password-ref" in capsys.readouterr().err


def test_removing_an_administrator_ends_their_sessions_and_is_audited(config, capsys):
    assert admin(config, "add-admin", "--name", "alice", "--password-ref", "env:CONSOLE_PW") == 0
    store = opened(config)
    try:
        store.create_console_session("digest", "alice", "csrf", 1.0, idle_s=900)
    finally:
        store.close()
    assert admin(config, "remove-admin", "--name", "alice") == 0
    assert "their console sessions ended" in capsys.readouterr().out
    assert admin(config, "remove-admin", "--name", "alice") == Exit.NOT_DONE
    assert "No administrator 'alice'." in capsys.readouterr().err
    store = opened(config)
    try:
        assert store.console_session("digest") is None and store.admins() == []
        assert [e.action for e in store.audit()] == ["remove_admin", "add_admin"]
    finally:
        store.close()
    assert admin(config, "admins") == 0
    assert "No administrators" in capsys.readouterr().err
