"""A `file:` secret reference takes a regular file only: a named pipe, which open() would wait
on for ever (holding the reload watcher's lock, hanging `admin check-config`), is refused at
once naming the field; a symbolic link to a secret file (Kubernetes mounts them so) is read."""

from __future__ import annotations

import os
import threading

import pytest
from faceid_core.errors import FaceIdError

from connector.config.checks import check_text
from connector.secretref import resolve_secret


def answer_within(seconds: float, call):
    """call()'s outcome, or a failure when it has not returned within `seconds` (a hang)."""
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(_outcome(call)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"no answer within {seconds} s"
    return outcome[0]


def _outcome(call):
    try:
        return call()
    except FaceIdError as exc:
        return exc


def test_a_secret_file_that_is_a_named_pipe_is_refused_at_once_naming_the_field(tmp_path):
    fifo = tmp_path / "password"
    os.mkfifo(fifo, 0o600)
    refused = answer_within(10, lambda: resolve_secret(f"file:{fifo}", "devices[0].password"))
    assert isinstance(refused, FaceIdError) and refused.code == "config_error"
    assert refused.message == (
        f"devices[0].password: secret file {fifo} is not a regular file (a named pipe)"
    )


def test_a_named_pipe_in_the_file_is_one_of_its_listed_problems(tmp_path):
    os.mkfifo(tmp_path / "store.key", 0o600)
    text = '[function]\nurl = "http://127.0.0.1:9/verify"\nauth = "none"\n' \
        '[store]\npath = "faceid.db"\nkey = "file:store.key"\n'  # fmt: skip
    path = str(tmp_path / "faceid.toml")
    checked = answer_within(10, lambda: check_text(text, path))
    assert not checked.ok
    assert any("store.key: secret file" in p and "a named pipe" in p for p in checked.problems)


def test_a_device_is_refused_naming_the_field(tmp_path):
    with pytest.raises(FaceIdError, match=r"^webex.bot_token: .* not a regular file \(a device\)$"):
        resolve_secret("file:/dev/null", "webex.bot_token")


def test_a_symbolic_link_to_a_secret_file_is_followed(tmp_path):
    (tmp_path / "..data").mkdir()
    target = tmp_path / "..data" / "password"
    target.write_text("from-the-link\n")
    target.chmod(0o600)
    (tmp_path / "password").symlink_to(target)
    assert resolve_secret(f"file:{tmp_path / 'password'}", "x") == "from-the-link"
