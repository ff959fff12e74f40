"""The connector's outward calls, each typed by a small Protocol: the rules (verification.py,
enrollment.py, runtime.py) depend on these, never on the concrete clients, as httpx's Client
depends on BaseTransport. Each has a client that goes over the network and an in-memory one:

    Camera      device.DeviceClient       memory.MemoryCamera
    Comparator  relay.FunctionClient      memory.MemoryComparator
    Notices     webex.WebexNotices        memory.MemoryNotices
    Clock       time.time                 memory.SettableClock

The values that cross these seams (Snapshot, SignOut, RelayResult, Event) stay with the client
that produces them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from .device import DeviceAccess, SignOut, Snapshot
from .relay import Found, RelayResult
from .webex import Event


class Camera(Protocol):
    """A device's camera: one picture per call, always signed in and signed out again."""

    @property
    def budget_s(self) -> float:
        """Sign-in and snapshot together end within this."""
        ...

    @property
    def signout_budget_s(self) -> float:
        """The sign-out after a snapshot ends within this."""
        ...

    def snapshot(self, access: DeviceAccess) -> Snapshot:
        """Sign in, take one picture, sign out; a DeviceError when the device fails."""
        ...

    def sign_out_session(self, access: DeviceAccess, cookies: Mapping[str, str]) -> SignOut:
        """Sign out a session a crash left open; never raises."""
        ...


class Comparator(Protocol):
    """The comparison function: compares a probe with references, and finds faces."""

    def verify(
        self,
        probe_jpeg: bytes,
        references: Sequence[tuple[str, bytes]],
        trace: str | None = None,
        threshold: float | None = None,
    ) -> RelayResult:
        """Compare the probe with 1 to 10 (id, image) references; raises FaceIdError."""
        ...

    def inspect(self, jpeg: bytes, trace: str | None = None) -> list[Found]:
        """The faces in the image, each an (x, y, w, h) box and a detection score; raises
        FaceIdError."""
        ...

    def reachable(self) -> str | None:
        """None when the function answers; otherwise a short reason (for /healthz)."""
        ...

    def close(self) -> None:
        """Let go of pooled connections."""
        ...


class Notices(Protocol):
    """Messages to the administrators: queued, never blocking or failing a request."""

    def notify(self, event: Event) -> None:
        """Tell the administrators about one request (or choose not to)."""
        ...

    def close(self, deadline_s: float) -> int:
        """Send what is queued within the deadline; returns how many were dropped."""
        ...


class Clock(Protocol):
    """Seconds since the epoch, like time.time: an NTP step may set it back or forward."""

    def __call__(self) -> float: ...
