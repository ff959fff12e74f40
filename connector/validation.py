"""Input rules for what the macro sends: strict, bounded, and free of path or control characters."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from faceid_core.errors import bad_request

from .names import visible

# \A and \Z, not ^ and $: "$" also matches before a final newline ("SIM0000\n").
SERIAL_RE = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")
PERSON_MAX_LEN = 64
#: SETTINGS.pushId, written by `admin provision` (empty when the macro was installed by hand).
PUSH_ID_RE = re.compile(r"\A[A-Za-z0-9_-]{0,64}\Z")
#: POST /v1/code-events: events per request (the macro keeps at most 50 and sends them in turn).
MAX_CODE_EVENTS = 20
#: An event's id: 8 random bytes in lowercase hex, chosen by the macro.
EVENT_ID_RE = re.compile(r"\A[0-9a-f]{16}\Z")
#: Times in events are Unix seconds by the device's clock, which may have been wrong when the
#: event happened (its network was down): any past time is taken as written, but not one more
#: than a day ahead of the connector's clock, which no device reporting late can have seen.
UNIX_TIME_MAX = 2**32 - 1
EVENT_AHEAD_MAX_S = 86400
#: A wait after wrong codes doubles from 300 s up to a day (contract of macro/faceid.js).
WAIT_MAX_S = 86400
WRONG_MAX = 1_000_000


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


@dataclass(frozen=True)
class CodeUsed:
    """An unlock code opened the device at `at`; it was valid until `expires`."""

    id: str
    at: int
    expires: int


@dataclass(frozen=True)
class CodeWait:
    """The device stopped checking codes for `wait_s` after `wrong` wrong codes in a row."""

    id: str
    at: int
    wait_s: int
    wrong: int


CodeEvent = CodeUsed | CodeWait
#: Each kind's fields, besides `kind`: exactly these, no more.
CODE_EVENT_FIELDS = {"used": ("id", "at", "expires"), "wait": ("id", "at", "wait_s", "wrong")}
#: The bounds of each whole-number field, both included.
CODE_EVENT_RANGES = {
    "at": (0, UNIX_TIME_MAX),
    "expires": (0, UNIX_TIME_MAX),
    "wait_s": (1, WAIT_MAX_S),
    "wrong": (1, WRONG_MAX),
}


def code_events(body: dict[str, Any], now: float) -> list[CodeEvent]:
    """The events of a POST /v1/code-events body ({"serial", "events"}), every field checked:
    a kind it does not know, a field missing, unknown or out of range, or an `at` more than
    EVENT_AHEAD_MAX_S after `now` (the connector's clock) is bad_request."""
    items = body.get("events")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_CODE_EVENTS:
        raise bad_request(f"'events' must be a list of 1 to {MAX_CODE_EVENTS} events")
    events = [_code_event(item, f"events[{i}]") for i, item in enumerate(items)]
    for i, event in enumerate(events):
        if event.at > now + EVENT_AHEAD_MAX_S:
            raise bad_request(f"'events[{i}].at' is more than a day ahead of the connector's clock")
    return events


def _code_event(item: Any, where: str) -> CodeEvent:
    kind = item.get("kind") if isinstance(item, dict) else None
    if not isinstance(kind, str) or kind not in CODE_EVENT_FIELDS:
        raise bad_request(f"'{where}' must be an object whose 'kind' is 'used' or 'wait'")
    fields = CODE_EVENT_FIELDS[kind]
    extra = sorted(set(item) - {"kind", *fields})
    if extra:
        raise bad_request(f"'{where}' has an unknown field {extra[0]!r}")
    event_id = item.get("id")
    if not isinstance(event_id, str) or not EVENT_ID_RE.match(event_id):
        raise bad_request(f"'{where}.id' must be 16 lowercase hex characters")
    numbers = {
        name: _whole(item.get(name), f"{where}.{name}", *CODE_EVENT_RANGES[name])
        for name in fields[1:]
    }
    if kind == "used":
        return CodeUsed(event_id, **numbers)
    return CodeWait(event_id, **numbers)


def _whole(value: Any, where: str, low: int, high: int) -> int:
    """JSON has one kind of number: 300.0 is 300 (JSON Schema's integer), 300.5 is refused."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad_request(f"'{where}' must be a whole number from {low} to {high}")
    return value
