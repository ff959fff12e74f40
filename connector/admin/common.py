"""What every admin command shares: exit statuses, the operator's name, output helpers."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import IntEnum
from typing import Any

from faceid_core.errors import FaceIdError, Refusal
from rich.cells import cell_len

from .. import validation
from ..config import ConnectorConfig
from ..runtime import Runtime, build_runtime
from ..secretref import check_ref, resolve_secret
from ..store import AuditEntry


class Exit(IntEnum):
    """What a command's exit status tells a script."""

    DONE = 0
    NOT_DONE = 1  # refused, or nothing to act on (no such device or person)
    FAILED = 2  # an error stopped it: a setting, an argument, the store, a device


#: The exit status of a command an error stopped, by family (the first that matches).
EXIT_CODES: tuple[tuple[type[FaceIdError], Exit], ...] = (
    (Refusal, Exit.NOT_DONE),
    (FaceIdError, Exit.FAILED),
)


def exit_code(exc: FaceIdError) -> Exit:
    """The exit status for an error that stopped a command (EXIT_CODES)."""
    return next(code for family, code in EXIT_CODES if isinstance(exc, family))


#: An operator's name as the audit keeps it: a user name is far shorter (Linux: 32).
OPERATOR_MAX_LEN = 64


def operator() -> str:
    """The operating-system user running the command: who an admin action's audit names. Run
    with sudo as the service user (docs/deploy.md), the user who ran sudo is named too. Printable
    and bounded: the audit is shown on other administrators' terminals."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's arbitrary user)
        user = f"uid {os.getuid()}"
    invoker = os.environ.get("SUDO_USER")
    name = f"{invoker} (sudo as {user})" if invoker and invoker != user else user
    return "".join(ch if ch.isprintable() else "?" for ch in name)[:OPERATOR_MAX_LEN]


def admin_audit(action: str, outcome: str, serial: str | None, **fields: Any) -> AuditEntry:
    """The audit entry of an administrator's action, naming the operator."""
    return AuditEntry(
        action, outcome, serial=serial, request_id=uuid.uuid4().hex, actor=operator(), **fields
    )


def configured(config: ConnectorConfig, serial: str) -> bool:
    """Is `serial` a device of the configuration? When not, says so on stderr."""
    if config.device(serial) is None:
        print(f"No device {serial} in the configuration.", file=sys.stderr)
        return False
    return True


def known_serial(config: ConnectorConfig, value: str) -> str | None:
    """The serial a command names, checked; None (said on stderr) if no device has it."""
    serial = validation.serial(value)
    return serial if configured(config, serial) else None


def whole_number(high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from 1 to `high`, else a usage error (exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not 1 <= value <= high:
            raise argparse.ArgumentTypeError(f"must be 1 to {high}, not {value}")
        return value

    return parse


def absolute_ref(ref: str) -> str:
    """A file: reference given on the command line is relative to the current folder, not to
    the configuration file's."""
    if ref.startswith("file:"):
        return "file:" + os.path.abspath(os.path.expanduser(ref[5:]))
    return ref


def secret_option(ref: str, option: str) -> str:
    """The secret a command-line reference (`option`) names, resolved now."""
    return resolve_secret(check_ref(absolute_ref(ref), option), option)


def print_json(value: Any) -> None:
    print(json.dumps(value, default=str))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Aligned columns, for a reader (scripts read --json). Widths count terminal cells, so wide
    characters in a name keep the columns straight; no line ends in spaces."""
    widths = [max(cell_len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    for row in (headers, *rows):
        padded = (
            cell + " " * (width - cell_len(cell)) for cell, width in zip(row, widths, strict=True)
        )
        print("  ".join(padded).rstrip())


@contextmanager
def runtime(config: ConnectorConfig, serials: list[str]) -> Iterator[Runtime]:
    """A runtime for one command, reaching only `serials` (their passwords alone resolved)."""
    rt = build_runtime(config, serials)
    try:
        yield rt
    finally:
        rt.close()
