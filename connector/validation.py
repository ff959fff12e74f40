"""Input rules for what the macro sends: strict, bounded, and free of path or control characters."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from faceid_core.errors import bad_request

from .names import visible

# \A and \Z, not ^ and $: "$" also matches before a final newline ("SIM0000\n").
SERIAL_RE = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")
PERSON_MAX_LEN = 64
#: SETTINGS.pushId, written by `admin provision` (empty when the macro was installed by hand).
PUSH_ID_RE = re.compile(r"\A[A-Za-z0-9_-]{0,64}\Z")


def serial(value: Any) -> str:
    if not isinstance(value, str) or not SERIAL_RE.match(value):
        raise bad_request("'serial' must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'")
    return value


def push_id(value: Any) -> str | None:
    """The push a macro names in its report; None for one installed by hand."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not PUSH_ID_RE.match(value):
        raise bad_request("'push' must be up to 64 characters of A-Z, a-z, 0-9, '_' or '-'")
    return value


def person(value: Any) -> str:
    """A display name: printable, no path separators, 1 to 64 characters once trimmed."""
    if not isinstance(value, str):
        raise bad_request("'person' must be a string")
    name = unicodedata.normalize("NFC", value).strip()
    if not 1 <= len(name) <= PERSON_MAX_LEN:
        raise bad_request(f"'person' must be 1 to {PERSON_MAX_LEN} characters")
    if any(not ch.isprintable() or ch in "/\\" for ch in name):
        raise bad_request("'person' may not contain control characters, '/' or '\\'")
    if not visible(name):
        raise bad_request("'person' must have a visible character (not only marks or spaces)")
    return name
