"""Everything wrong with a configuration file, listed at once: what loading.py finds in its text,
then, if it reads, every secret it names resolved (the store key decoded to 32 bytes, each device
password, the Webex bot token) and the function's credential file read, as start-up would.

`admin check-config` prints the list; the running service checks a changed file with it before
taking it (connector/reload.py), so that a file start-up would refuse is refused whole. The store
itself is neither opened nor created: a missing database is created at start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from faceid_core.errors import FaceIdError

from ..idtoken import IdTokenSource
from ..secretref import resolve_secret
from .loading import parse_all, read_text
from .schema import ConnectorConfig, decode_store_key


@dataclass(frozen=True)
class Checked:
    """A file checked: `config` when there is no problem. `passwords` holds each device's password
    by serial, resolved once here, so that taking the file does not read every secret again."""

    problems: tuple[str, ...]
    config: ConnectorConfig | None = None
    passwords: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_text(text: str, path: str | os.PathLike[str]) -> Checked:
    """`text` as the file at `path`: every problem of its fields, then of its secrets."""
    config, problems = parse_all(text, path)
    if config is None:
        return Checked(tuple(problems))

    def resolved(ref: str, what: str) -> str | None:
        try:
            return resolve_secret(ref, what)
        except FaceIdError as exc:
            problems.append(exc.message)
            return None

    store_key = resolved(config.store.key, "store.key")
    if store_key is not None:
        try:
            decode_store_key(store_key)
        except FaceIdError as exc:
            problems.append(exc.message)
    if config.store.password is not None:
        resolved(config.store.password, "store.password")
    # A password shared through [device_defaults] is read once, and its problem said once.
    by_ref: dict[str, str | None] = {}
    passwords: dict[str, str] = {}
    for i, device in enumerate(config.devices):
        if device.password not in by_ref:
            shared = device.password == config.device_defaults.password
            what = "device_defaults.password" if shared else f"devices[{i}].password"
            by_ref[device.password] = resolved(device.password, what)
        password = by_ref[device.password]
        if password is not None:
            passwords[device.serial] = password
    if config.webex is not None:
        resolved(config.webex.bot_token, "webex.bot_token")
    function = config.function
    if function.auth == "google-id-token" and function.credentials_file is not None:
        try:  # reads the file, as the function client does at start
            IdTokenSource(
                function.audience,
                function.credentials_file,
                impersonate=function.impersonate_service_account,
            )
        except FaceIdError as exc:
            problems.append(exc.message)
    if problems:
        return Checked(tuple(problems))
    return Checked((), config, passwords)


def check(path: str | os.PathLike[str]) -> Checked:
    """The file at `path` checked (check_text); a file that cannot be read is its one problem."""
    try:
        text = read_text(path)
    except FaceIdError as exc:
        return Checked((exc.message,))
    return check_text(text, path)


def problems(path: str | os.PathLike[str]) -> list[str]:
    """Every problem of the file at `path`, each naming its field; empty when it would start."""
    return list(check(path).problems)
