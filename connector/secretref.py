"""Secret references: the configuration names where a secret lives, never the secret itself.

    env:NAME                               an environment variable (e.g. set by systemd)
    file:PATH                              a regular file (symbolic links followed); one
                                           trailing newline is dropped
    gsm:projects/P/secrets/S/versions/V    a Google Secret Manager version

A file readable by group or others is used but logged as a warning: container runtimes mount
secrets 0444/0644 inside a private filesystem, so refusing them would break those deployments.
"""

from __future__ import annotations

import os
import re
import stat

from faceid_core.errors import config_error
from faceid_core.logs import log
from faceid_core.secrets import SECRET_VERSION_RE, access_secret

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_FILE_BYTES = 64 * 1024
REF_HELP = "env:NAME, file:PATH or gsm:projects/P/secrets/S/versions/V"


def check_ref(ref: object, what: str) -> str:
    """Refuse anything that is not a well-formed reference, without echoing it (it may be a
    password pasted where its reference belongs)."""
    if not isinstance(ref, str):
        raise config_error(f"{what} must be a secret reference ({REF_HELP})")
    kind, sep, target = ref.partition(":")
    ok = bool(sep) and (
        (kind == "env" and ENV_NAME_RE.match(target) is not None)
        or (kind == "file" and bool(target) and "\x00" not in target)
        or (kind == "gsm" and SECRET_VERSION_RE.match(target) is not None)
    )
    if not ok:
        raise config_error(
            f"{what} must be a secret reference ({REF_HELP}); literal secrets are not accepted"
        )
    return ref


def _strip_newline(value: str) -> str:
    if value.endswith("\r\n"):
        return value[:-2]
    return value[:-1] if value.endswith("\n") else value


def _from_env(name: str, what: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise config_error(f"{what}: environment variable {name} is not set or empty")
    return value


def _from_file(path: str, what: str) -> str:
    # O_NONBLOCK: opening a named pipe would otherwise wait for a writer for ever (and a reload
    # with it); fstat then refuses it. Symbolic links are followed (Kubernetes mounts secrets so).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise config_error(f"{what}: secret file {path} does not exist") from None
    except PermissionError:
        raise config_error(f"{what}: secret file {path} is not readable by this user") from None
    except OSError as exc:
        raise config_error(
            f"{what}: secret file {path} could not be read ({exc.strerror})"
        ) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise config_error(f"{what}: secret file {path} is not a regular file ({_kind(mode)})")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise config_error(
                f"{what}: secret file {path} could not be read ({exc.strerror})"
            ) from None
    if len(data) > MAX_FILE_BYTES:
        raise config_error(f"{what}: secret file {path} is over {MAX_FILE_BYTES} bytes")
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log("WARNING", f"{what}: secret file {path} is readable by group or others; chmod 600 it")
    return _decode(data, f"{what}: secret file {path}")


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _decode(data: bytes, where: str) -> str:
    try:
        return _strip_newline(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise config_error(f"{where} is not UTF-8 text") from None


def resolve_secret(ref: str, what: str) -> str:
    """The secret's value; any failure is a config_error naming `what` and the reference kind
    and name, never the value."""
    check_ref(ref, what)
    kind, _, target = ref.partition(":")
    if kind == "env":
        value = _from_env(target, what)
    elif kind == "file":
        value = _from_file(target, what)
    else:
        value = _decode(access_secret(target, what), f"{what}: secret {target}")
    if not value:
        raise config_error(f"{what}: the secret referenced by {kind}:{target} is empty")
    return value
