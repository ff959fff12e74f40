"""Protocol v2 between the macro and the connector (docs/api.md §2).

The device key never travels: every request is signed with it, and every answer to a signed
request is signed back over the request's nonce and the exact body bytes. A connector impostor
therefore learns a few HMAC values, from which it can forge neither a request nor an answer; a
network observer who replays a request is refused by the timestamp window and the nonce cache.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from faceid_core.errors import AuthError

SCHEME = "FaceID-HMAC-SHA256"
REQUEST_CONTEXT = "FACEID-V2"
ANSWER_CONTEXT = "FACEID-V2-ANSWER"
SIGNATURE_HEADER = "X-FaceID-Signature"
KEY_BYTES = 32
#: A request whose ts is further than this from the connector's clock is refused (clock_skew).
MAX_SKEW_S = 60
#: How long a (serial, nonce) pair is remembered; well beyond the skew window on either side.
REPLAY_WINDOW_S = 600
#: A verify answer is valid this long (the macro allows 5 s of skew on top).
ANSWER_TTL_S = 30

_PARAM_RE = re.compile(
    r"\Aserial=(?P<serial>[A-Za-z0-9_-]{1,64}),ts=(?P<ts>[0-9]{1,12}),"
    r"nonce=(?P<nonce>[A-Za-z0-9_-]{16,64}),signature=(?P<signature>[0-9a-f]{64})\Z"
)
_KEY_RE = re.compile(r"\A[A-Za-z0-9_-]{43}\Z")
#: Stands in for an unknown serial's key, so that a wrong serial costs the same work.
_NO_KEY = hashlib.sha256(b"faceid: no such device").digest()


def unauthorized() -> AuthError:
    return AuthError("unauthorized", "Unknown device or wrong signature")


@dataclass(frozen=True)
class SignedRequest:
    """The parameters of an Authorization header, not yet checked against any key."""

    serial: str
    ts: int
    nonce: str
    signature: str


def new_device_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def encode_key(key: bytes) -> str:
    """43 characters of base64url without padding: what the macro's SETTINGS.deviceKey holds."""
    return base64.urlsafe_b64encode(key).decode("ascii").rstrip("=")


def decode_key(text: str) -> bytes:
    if not _KEY_RE.match(text):
        raise ValueError("a device key is 43 characters of base64url")
    try:
        key = base64.urlsafe_b64decode(text + "=")
    except binascii.Error:
        raise ValueError("a device key is 43 characters of base64url") from None
    if encode_key(key) != text:  # non-canonical trailing bits
        raise ValueError("a device key is 43 characters of base64url")
    return key


def parse_authorization(header: str | None) -> SignedRequest:
    """The header's parameters, or unauthorized for anything else (a Bearer token included)."""
    scheme, _, params = (header or "").partition(" ")
    match = _PARAM_RE.match(params) if scheme == SCHEME else None
    if match is None:
        raise unauthorized()
    return SignedRequest(
        serial=match["serial"],
        ts=int(match["ts"]),
        nonce=match["nonce"],
        signature=match["signature"],
    )


def string_to_sign(method: str, path: str, serial: str, ts: int, nonce: str, body: bytes) -> bytes:
    """What the macro signs: the request line, who and when, and a digest of the exact body."""
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join([REQUEST_CONTEXT, method, path, serial, str(ts), nonce, digest]).encode()


def request_signature(
    key: bytes, method: str, path: str, serial: str, ts: int, nonce: str, body: bytes
) -> str:
    message = string_to_sign(method, path, serial, ts, nonce, body)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def answer_signature(key: bytes, nonce: str, body: bytes) -> str:
    """The X-FaceID-Signature of an answer: bound to the request's nonce and the whole body."""
    message = f"{ANSWER_CONTEXT}\n{nonce}\n".encode() + body
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def signature_holds(
    key: bytes | None, request: SignedRequest, method: str, path: str, body: bytes
) -> bool:
    """Constant time, and the same work whether or not the serial has a key."""
    expected = request_signature(
        key or _NO_KEY, method, path, request.serial, request.ts, request.nonce, body
    )
    return hmac.compare_digest(expected, request.signature) and key is not None


def check_fresh(ts: int, now: float) -> None:
    if abs(now - ts) > MAX_SKEW_S:
        raise AuthError(
            "clock_skew",
            f"The request's time is more than {MAX_SKEW_S} s from the connector's clock: "
            "check the device's time settings (NTP)",
        )


class NonceLedger(Protocol):
    """Where spent nonces are kept (the store): shared by every connector on the same one."""

    def spend_nonce(self, serial: str, nonce: str, now: float, window_s: float) -> bool: ...


class ReplayCache:
    """(serial, nonce) pairs seen in the last REPLAY_WINDOW_S, in the store: a nonce that one
    connector accepted is refused by every other sharing the store, and of the same request sent
    many times at once, exactly one is first."""

    def __init__(self, ledger: NonceLedger, window_s: float = REPLAY_WINDOW_S) -> None:
        self._ledger, self.window_s = ledger, window_s

    def first_use(self, serial: str, nonce: str, now: float) -> None:
        """Spend the pair; raises replayed when it is not new."""
        if not self._ledger.spend_nonce(serial, nonce, now, self.window_s):
            raise AuthError("replayed", "This request was already received (replayed)")


@dataclass(frozen=True)
class Caller:
    """A device whose signature held: answers to it are signed with `key` over `nonce`."""

    serial: str
    key: bytes
    nonce: str
    ts: int


class Authenticator:
    """Checks signed requests in two steps, so that the answer to a request whose signature held
    is signed even when it is then refused as stale or replayed."""

    def __init__(
        self,
        keys: Callable[[str], bytes | None],
        replay: ReplayCache,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys, self._replay, self._clock = keys, replay, clock

    def identify(self, header: str | None, method: str, path: str, body: bytes) -> Caller:
        """The device that signed this request, or unauthorized (unknown serial or wrong
        signature: the same answer after the same work)."""
        request = parse_authorization(header)
        key = self._keys(request.serial)
        holds = signature_holds(key, request, method, path, body)  # also when key is None
        if not holds or key is None:
            raise unauthorized()
        return Caller(request.serial, key, request.nonce, request.ts)

    def admit(self, caller: Caller) -> None:
        """clock_skew or replayed, else the nonce is spent."""
        now = self._clock()
        check_fresh(caller.ts, now)
        self._replay.first_use(caller.serial, caller.nonce, now)
