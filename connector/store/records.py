"""What the store hands out and takes in: plain values, the same whichever database holds them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple


class Reference(NamedTuple):
    """A decrypted reference photo; unpacks as (person, image)."""

    person: str
    image: bytes


@dataclass(frozen=True)
class PersonInfo:
    name: str
    references: int
    created: float
    last_enrolled: float


@dataclass(frozen=True)
class ReferenceInfo:
    """A kept photo, without its image: what the console lists."""

    id: int
    created: float


@dataclass(frozen=True)
class AdminInfo:
    """A console administrator, without the password hash."""

    name: str
    created: float


@dataclass(frozen=True)
class Enrollment:
    person_id: int
    reference_id: int
    references: int  # this person's photos after the change
    dropped: int  # oldest photos removed to stay within the limit


@dataclass(frozen=True)
class AuditEntry:
    """One audited request. Facts only: never an image, a token or a password."""

    action: str
    outcome: str | None = None
    serial: str | None = None
    request_id: str | None = None
    code: str | None = None
    person: str | None = None
    score: float | None = None
    stages_ms: Mapping[str, float] | None = None
    # An administrator's command: the operating-system user who ran it; a console action (or a
    # login): the console administrator's name.
    actor: str | None = None
    time: float | None = None  # set when written
    id: int | None = None  # set when read back

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LockoutState:
    failures: int = 0
    locked_until: float = 0.0


@dataclass(frozen=True)
class Session:
    """An unlocked session: who matched, and when (which also tells one session from the next)."""

    person: str
    started: float


@dataclass(frozen=True)
class DeviceWebSession:
    """A device web session the connector opened and has not seen signed out."""

    entry: int
    serial: str
    created: float
    cookies: dict[str, str] | None = field(repr=False)  # None: failed its integrity check


#: What begin_attempt decides (Gate).
Decision = Literal["go", "busy", "locked_out"]
#: How an attempt settles (finish_attempt): a match, a failure towards the lockout, or neither.
Settlement = Literal["match", "failure", "neutral"]


class Gate(NamedTuple):
    """What begin_attempt decided: "go" (the attempt holds the device, `token` names its hold),
    "busy" (another attempt does) or "locked_out"; `state` is the lockout as it now stands."""

    decision: Decision
    state: LockoutState
    token: str | None = None
