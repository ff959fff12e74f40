"""The administrator's edits of the TOML file: add or remove one [[devices]] block.

They work on the text, so that comments and layout survive, and each is checked by parsing the
new text: the edit must change that one device and nothing else, or the file is left as it was.
The new text replaces the file atomically (a sibling temporary file renamed over it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import stat
import tempfile
import tomllib

from faceid_core.errors import config_error

from ..device import TlsPolicy
from .loading import parse, read_text
from .schema import ConnectorConfig

HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?\s*(?:#.*)?$")


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string for the printable text allowed here.
    return json.dumps(value, ensure_ascii=True)


def _device_block(
    serial: str,
    host: str,
    tls: TlsPolicy,
    username: str | None,
    password_ref: str | None,
    name: str | None,
) -> str:
    lines = ["[[devices]]", f"serial = {_toml_string(serial)}"]
    if name is not None:
        lines.append(f"name = {_toml_string(name)}")
    lines.append(f"host = {_toml_string(host)}")
    if username is not None:
        lines.append(f"username = {_toml_string(username)}")
    if password_ref is not None:
        lines.append(f"password = {_toml_string(password_ref)}")
    if tls.ca_bundle is not None:
        tls_text = f"ca_bundle = {_toml_string(tls.ca_bundle)}"
    elif tls.fingerprint_sha256 is not None:
        tls_text = f"fingerprint_sha256 = {_toml_string(tls.fingerprint_sha256)}"
    else:
        tls_text = "insecure = true" if tls.insecure else ""
    lines.append(f"tls = {{ {tls_text} }}" if tls_text else "tls = {}")
    return "\n".join(lines) + "\n"


def replace_file(path: str, text: str) -> None:
    """Write a sibling temporary file with the same mode, fsync it, then rename it over `path`."""
    st = os.stat(path)
    fd, tmp = tempfile.mkstemp(prefix=".faceid-", suffix=".tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        with contextlib.suppress(PermissionError):
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _commit_edit(path: str, new_text: str, expected: ConnectorConfig, action: str) -> None:
    new = parse(new_text, path)
    if new != expected:
        raise config_error(
            f"{path}: could not {action} without changing anything else; edit the file by hand"
        )
    replace_file(path, new_text)


def add_device(
    path: str | os.PathLike[str],
    *,
    serial: str,
    host: str,
    tls: TlsPolicy,
    username: str | None = None,
    password_ref: str | None = None,
    name: str | None = None,
) -> None:
    """Append a [[devices]] block (its key goes to the store, not here).

    username and password_ref may be left to [device_defaults].
    """
    real = os.path.realpath(path)
    text = read_text(real)
    old = parse(text, real)
    if old.device(serial) is not None:
        raise config_error(f"{real}: a device with serial {serial!r} is already configured")
    block = _device_block(serial, host, tls, username, password_ref, name)
    new_text = text + ("" if not text or text.endswith("\n") else "\n") + "\n" + block
    new = parse(new_text, real)  # names the bad field, e.g. devices[3].host
    expected = dataclasses.replace(old, devices=(*old.devices, new.devices[-1]))
    _commit_edit(real, new_text, expected, f"add device {serial}")


def _device_blocks(lines: list[str]) -> list[tuple[int, int]]:
    """(start, end) line ranges of each [[devices]] table, its sub-tables included and the
    comments and blank lines that trail it (they introduce what follows) excluded."""
    headers = [(i, m) for i, line in enumerate(lines) if (m := HEADER_RE.match(line))]
    blocks = []
    for n, (start, m) in enumerate(headers):
        if m.group(1) != "[[" or m.group(2) != "devices":
            continue
        end = len(lines)
        for i, other in headers[n + 1 :]:
            if not other.group(2).startswith("devices."):
                end = i
                break
        while end > start + 1 and (
            not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")
        ):
            end -= 1
        blocks.append((start, end))
    return blocks


def remove_device(path: str | os.PathLike[str], serial: str) -> bool:
    """Delete the [[devices]] block of `serial`; False when no device has that serial."""
    real = os.path.realpath(path)
    text = read_text(real)
    old = parse(text, real)
    if old.device(serial) is None:
        return False
    lines = text.splitlines(keepends=True)
    for start, end in _device_blocks(lines):
        try:
            block = tomllib.loads("".join(lines[start:end]))
        except tomllib.TOMLDecodeError:
            continue
        devices = block.get("devices")
        if not (isinstance(devices, list) and devices and devices[0].get("serial") == serial):
            continue
        if (
            start > 0
            and not lines[start - 1].strip()
            and (end == len(lines) or not lines[end].strip())
        ):
            start -= 1  # do not leave two blank lines behind
        new_text = "".join(lines[:start] + lines[end:])
        expected = dataclasses.replace(
            old, devices=tuple(d for d in old.devices if d.serial != serial)
        )
        _commit_edit(real, new_text, expected, f"remove device {serial}")
        return True
    raise config_error(f"{real}: could not find the [[devices]] block of {serial}; edit by hand")
