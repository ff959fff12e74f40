"""In-memory implementations of the connector's ports (ports.py), like httpx's MockTransport: no
socket, no thread, no sleep. Each answers what it was given and records what it was asked, so
that the rules of verification.py and enrollment.py are tested in milliseconds against a real
Store:

    camera = MemoryCamera(jpeg)                       # or MemoryCamera(error=DeviceError(...))
    function = MemoryComparator([MATCH, NO_MATCH])    # verdicts in order, then `otherwise`
    notices, clock = MemoryNotices(), SettableClock()
    ...
    clock.advance(-3600)                              # an NTP step back
    assert function.calls[0].ids == ("r0",) and notices.events[-1].code == "not_recognized"
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from faceid_core.errors import FaceIdError

from .device import DeviceAccess, SignOut, Snapshot
from .relay import Box, Found, RelayResult
from .webex import Event

#: A face as the function's inspect reports it, large enough for enrollment's min_face_px.
FACE: Box = (100, 80, 200, 200)


class MemoryCamera:
    """A camera that returns the given JPEG bytes, or raises the given error."""

    def __init__(
        self,
        jpeg: bytes = b"",
        *,
        error: FaceIdError | None = None,
        during: Callable[[DeviceAccess], None] | None = None,
        budget_s: float = 6.0,
        signout_budget_s: float = 2.0,
    ) -> None:
        """`during(access)` runs inside each snapshot, while the device is held (e.g. another
        attempt on the same device); `jpeg` and `error` may be changed at any time."""
        self.jpeg = jpeg
        self.error = error
        self.during = during
        self.budget_s = budget_s
        self.signout_budget_s = signout_budget_s
        self.snapshots: list[str] = []  # the serial (else host) of each snapshot asked for
        self.sign_outs: list[tuple[str, dict[str, str]]] = []
        self.sign_out_answer = SignOut(200, None)

    def snapshot(self, access: DeviceAccess) -> Snapshot:
        self.snapshots.append(access.serial or access.host)
        if self.during is not None:
            self.during(access)
        if self.error is not None:
            raise self.error
        return Snapshot(jpeg=self.jpeg, signin_ms=0.0, snapshot_ms=0.0, signout_ms=0.0)

    def sign_out_session(self, access: DeviceAccess, cookies: Mapping[str, str]) -> SignOut:
        self.sign_outs.append((access.serial or access.host, dict(cookies)))
        return self.sign_out_answer


@dataclass(frozen=True)
class Verdict:
    """A scripted comparison: "match" names the `reference`-th id sent (0: the first)."""

    verdict: Literal["match", "no_match"]
    reference: int = 0
    score: float = 0.0


MATCH = Verdict("match", score=0.95)
NO_MATCH = Verdict("no_match", score=0.2)

#: What one call answers: a verdict, or a failure it raises.
Answer = Verdict | FaceIdError
#: What one inspect answers: the faces found, or a failure it raises.
Faces = Sequence[Box] | FaceIdError


@dataclass(frozen=True)
class Call:
    """One call the comparator received (images left out: their sizes only)."""

    kind: Literal["verify", "inspect"]
    ids: tuple[str, ...] = ()
    threshold: float | None = None
    trace: str | None = None
    sizes: tuple[int, ...] = field(default=(), repr=False)


class MemoryComparator:
    """A comparison function that answers scripted verdicts and faces, and records its calls."""

    def __init__(
        self,
        verdicts: Iterable[Answer] = (),
        *,
        otherwise: Answer = NO_MATCH,
        faces: Iterable[Faces] = (),
        faces_otherwise: Faces = (FACE,),
        unreachable: str | None = None,
    ) -> None:
        """verify answers `verdicts` in turn, then `otherwise`; inspect answers `faces` in turn,
        then `faces_otherwise`; reachable answers `unreachable`."""
        self._verdicts: deque[Answer] = deque(verdicts)
        self._faces: deque[Faces] = deque(faces)
        self.otherwise = otherwise
        self.faces_otherwise = faces_otherwise
        self.unreachable = unreachable
        self.calls: list[Call] = []
        self.closed = False

    def script(self, *verdicts: Answer) -> None:
        """Queue more verify answers, after those still waiting."""
        self._verdicts.extend(verdicts)

    def script_faces(self, *faces: Faces) -> None:
        """Queue more inspect answers, after those still waiting."""
        self._faces.extend(faces)

    @property
    def verifies(self) -> list[Call]:
        return [call for call in self.calls if call.kind == "verify"]

    def verify(
        self,
        probe_jpeg: bytes,
        references: Sequence[tuple[str, bytes]],
        trace: str | None = None,
        threshold: float | None = None,
    ) -> RelayResult:
        ids = tuple(ref_id for ref_id, _ in references)
        sizes = (len(probe_jpeg), *(len(image) for _, image in references))
        self.calls.append(Call("verify", ids, threshold, trace, sizes))
        answer = self._verdicts.popleft() if self._verdicts else self.otherwise
        if isinstance(answer, FaceIdError):
            raise answer
        matched = ids[answer.reference] if answer.verdict == "match" else None
        return RelayResult(
            verdict=answer.verdict,
            matched_id=matched,
            score=answer.score,
            threshold=threshold,
            faces_in_probe=1,
            function_ms=0.0,
            round_trip_ms=0.0,
            auth_ms=0.0,
            bytes_sent=sum(sizes),
        )

    def inspect(self, jpeg: bytes, trace: str | None = None) -> list[Found]:
        self.calls.append(Call("inspect", trace=trace, sizes=(len(jpeg),)))
        answer = self._faces.popleft() if self._faces else self.faces_otherwise
        if isinstance(answer, FaceIdError):
            raise answer
        return [Found(box, 0.9) for box in answer]

    def reachable(self) -> str | None:
        return self.unreachable

    def close(self) -> None:
        self.closed = True


class MemoryNotices:
    """A notice sink that records every event it is given."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.closed_with: float | None = None  # close()'s deadline, once closed

    def notify(self, event: Event) -> None:
        self.events.append(event)

    def close(self, deadline_s: float) -> int:
        self.closed_with = deadline_s
        return 0


class SettableClock:
    """A clock that reads what it was set to, and moves only when told (back as well)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock by `seconds`; negative sets it back, as an NTP step may."""
        self.now += seconds
