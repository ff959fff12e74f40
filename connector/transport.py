"""What went wrong below HTTP, read in one place for every client of the connector: the device
client (device.py), the function client (relay.py) and its ID tokens (idtoken.py).

requests and urllib3 nest the cause of a failure several levels deep (a ConnectionError holding a
MaxRetryError holding a NewConnectionError holding a ConnectionRefusedError; google-auth wraps
all of it once more). `failure()` reads the whole chain once, against one table, checked in this
order (the first row that matches wins):

    found anywhere in the chain                                  kind
    ──────────────────────────────────────────────────────────   ──────────
    requests SSLError, unless the peer dropped the handshake     tls
    ConnectionRefusedError                                       refused
    socket.gaierror, urllib3 NameResolutionError                 unresolved
    TimeoutError, urllib3 TimeoutError, requests Timeout         timeout
      (urllib3's NewConnectionError subclasses its ConnectTimeoutError: a refusal is no timeout)
    SSLEOFError, ConnectionResetError, BrokenPipeError,          dropped
      RemoteDisconnected, urllib3 ProtocolError
    anything else                                                other

`device_unreachable()` and `engine_failure()` turn a Failure into the error family of that peer
(DeviceError, EngineError), with the words each client has always used.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import requests
import urllib3.exceptions
from faceid_core.errors import DeviceError, EngineError, engine_unavailable

Kind = Literal["tls", "refused", "unresolved", "timeout", "dropped", "other"]

_DROPPED_HANDSHAKE = (ssl.SSLEOFError, ConnectionResetError)
_DROPPED = (
    *_DROPPED_HANDSHAKE,
    BrokenPipeError,
    http.client.RemoteDisconnected,
    urllib3.exceptions.ProtocolError,
)
#: A kept-alive connection the peer had already closed when we reused it.
_GONE_BEFORE_SENDING = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
#: Device words for each kind ("Could not reach ... during the sign-in: <reason>").
_DEVICE_REASONS = {
    "refused": "connection refused",
    "unresolved": "the name does not resolve",
    "dropped": "the device closed the connection",
}


@dataclass(frozen=True)
class Failure:
    """One failed HTTP exchange, read once: its kind, the exception's type name (for "other"),
    every exception it wraps, and whether the peer can have seen the request at all."""

    kind: Kind
    name: str
    causes: tuple[BaseException, ...]
    #: Refused or unresolved before a byte was sent, or a kept-alive connection the peer had
    #: already closed: nothing was done there, so the request may be sent once more.
    unsent: bool


def failure(exc: BaseException) -> Failure:
    """Read `exc` and everything it wraps against the table in the module docstring."""
    causes = tuple(_causes(exc))

    def found(*types: type[BaseException]) -> bool:
        return any(isinstance(cause, types) for cause in causes)

    kind: Kind
    if found(requests.exceptions.SSLError) and not found(*_DROPPED_HANDSHAKE):
        kind = "tls"
    elif found(ConnectionRefusedError):
        kind = "refused"
    elif found(socket.gaierror, urllib3.exceptions.NameResolutionError):
        kind = "unresolved"
    elif any(_is_timeout(cause) for cause in causes):
        kind = "timeout"
    elif found(*_DROPPED):
        kind = "dropped"
    else:
        kind = "other"
    return Failure(kind, type(exc).__name__, causes, _unsent(exc))


def device_unreachable(failed: Failure, host: str, step: str) -> DeviceError:
    """A device that could not be talked to during `step` (sign-in, snapshot, sign-out). A TLS
    failure is not this: the device client says which trust refused it (device.py)."""
    if failed.kind == "timeout":
        return device_timed_out(host, step)
    reason = _DEVICE_REASONS.get(failed.kind, failed.name)
    return DeviceError(
        "device_unreachable",
        f"Could not reach the device's web interface at {host} during the {step}: {reason}",
    )


def device_timed_out(host: str, step: str) -> DeviceError:
    """A device that did not answer `step` within its deadline (however it ran out)."""
    return DeviceError(
        "device_unreachable", f"The device at {host} did not answer the {step} in time"
    )


def engine_failure(failed: Failure, service: str, timeout_s: float | None = None) -> EngineError:
    """engine_unavailable naming `service` (how the sentence starts: "The comparison service",
    "the IAM Credentials API") and, for a timeout, the time it had when that is known."""
    if failed.kind == "timeout":
        if timeout_s is None:
            return engine_unavailable(f"{service} did not answer in time")
        return engine_unavailable(f"{service} timed out (no answer within {timeout_s:g} s)")
    if failed.kind == "dropped":
        return engine_unavailable(f"{service} closed the connection")
    if failed.kind == "other":
        return engine_unavailable(f"{service} could not be called ({failed.name})")
    return engine_unavailable(f"{service} is unreachable")


def _unsent(exc: BaseException) -> bool:
    """requests' own ConnectionError says where it stopped: a NewConnectionError (no connection
    at all), or a ProtocolError over a dropped kept-alive connection, before any answer."""
    if not isinstance(exc, requests.ConnectionError) or not exc.args:
        return False
    cause = exc.args[0]
    if isinstance(getattr(cause, "reason", None), urllib3.exceptions.NewConnectionError):
        return True
    return isinstance(cause, urllib3.exceptions.ProtocolError) and any(
        isinstance(arg, _GONE_BEFORE_SENDING) for arg in cause.args
    )


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (requests and urllib3 nest through args/reason,
    google-auth through __cause__)."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        nested = [
            *current.args,
            getattr(current, "reason", None),
            current.__cause__,
            current.__context__,
        ]
        stack.extend(item for item in nested if isinstance(item, BaseException))


def _is_timeout(exc: BaseException) -> bool:
    # urllib3's NewConnectionError subclasses its ConnectTimeoutError: a refusal is no timeout.
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return False
    return isinstance(exc, TimeoutError | urllib3.exceptions.TimeoutError | requests.Timeout)
