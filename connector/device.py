"""Camera snapshots from a RoomOS device's web API: one sign-in, one snapshot, always a sign-out.

Why it is shaped this way (REFERENCE §1):
- Device web sessions never expire and are capped (30 in total, 20 per user), so the sign-out
  runs in a `finally` with its own time budget, also after a failed or timed-out snapshot.
- Five bad logins lock the account, so a call makes exactly one sign-in attempt and never
  retries (no urllib3 retries, no redirects followed).
- The session cookie's name differs by release: it is read from the sign-in answer's parsed
  cookies (SessionId / SecureSessionId preferred, else whatever the sign-in set) and sent back
  explicitly per request; the pooled requests.Session refuses to store cookies, so concurrent
  calls to one device never share a session.
- What a device answers when its session cap is hit is unknown: a 503 on sign-in is reported
  as "too many open web sessions" (device_unreachable). A 401 or 403 is device_auth_failed.
- Every failure is a FaceIdError (502) with code device_unreachable, device_auth_failed,
  device_tls_error or snapshot_unavailable and a message naming the host, never the password.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import cookiejar
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from faceverify.errors import FaceIdError, config_error
from faceverify.images import JPEG_MAGIC
from faceverify.logs import log
from PIL import Image
from requests.adapters import HTTPAdapter

from .tls import NoCaAdapter, display_fingerprint, normalize_fingerprint
from .tls import peer_fingerprint as read_peer_fingerprint

SIGNIN_PATH = "/web/signin/open"
SNAPSHOT_PATH = "/web/api/snapshot/get_b64?SourceType=localInput&SourceId=1"
SIGNOUT_PATH = "/web/signin/signout"
SESSION_COOKIE_NAMES = ("SessionId", "SecureSessionId")
MAX_SNAPSHOT_BYTES = 16 * 1024 * 1024
MAX_SMALL_ANSWER_BYTES = 64 * 1024
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class TlsPolicy:
    """At most one of: a CA bundle (hostname checked), a pinned SHA-256 of the device's DER
    certificate, or insecure=True. None of them means the default trusted CAs, which a device's
    factory self-signed certificate never passes."""

    ca_bundle: str | None = None
    fingerprint_sha256: str | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        chosen = [self.ca_bundle is not None, self.fingerprint_sha256 is not None, self.insecure]
        if sum(chosen) > 1:
            raise config_error(
                "Choose one TLS policy per device: a CA bundle, a pinned fingerprint or insecure"
            )
        if self.fingerprint_sha256 is not None:
            pin = normalize_fingerprint(self.fingerprint_sha256)
            object.__setattr__(self, "fingerprint_sha256", pin)

    @property
    def kind(self) -> str:
        if self.ca_bundle is not None:
            return "ca_bundle"
        if self.fingerprint_sha256 is not None:
            return "pinned"
        return "insecure" if self.insecure else "default_ca"


@dataclass(frozen=True)
class DeviceAccess:
    """How to reach one device. `host` is "host" or "host:port" ("[v6]:port"); always HTTPS."""

    host: str
    username: str
    password: str = field(repr=False)
    tls: TlsPolicy = field(default_factory=TlsPolicy)

    def __post_init__(self) -> None:
        try:
            parts = urlsplit(f"https://{self.host}")
            valid = bool(parts.hostname) and parts.port != 0  # .port raises on a bad port
        except ValueError:
            valid = False
        if (
            not valid
            or parts.path
            or parts.query
            or parts.fragment
            or parts.username is not None
            or any(c.isspace() for c in self.host)
        ):
            raise config_error(f"The device address {self.host!r} is not a host or host:port")

    @property
    def hostname(self) -> str:
        return urlsplit(f"https://{self.host}").hostname or self.host

    @property
    def port(self) -> int:
        return urlsplit(f"https://{self.host}").port or 443


@dataclass(frozen=True)
class Snapshot:
    jpeg: bytes = field(repr=False)
    signin_ms: float
    snapshot_ms: float
    signout_ms: float


def device_error(code: str, message: str) -> FaceIdError:
    return FaceIdError(502, code, message)


class _NoStoredCookies(cookiejar.DefaultCookiePolicy):
    """The pooled session must never remember a device session: cookies travel per call."""

    def set_ok(self, cookie: cookiejar.Cookie, request: Any) -> bool:
        return False


class DeviceClient:
    """Thread-safe. One pooled requests.Session per (host, TLS policy); no shared cookies.

    Time bounds: sign-in and snapshot together get `budget_s` (each request's connect and read
    timeouts are also capped by what is left, and the budget is checked between body reads);
    the sign-out then gets `signout_budget_s` of its own. Worst case ≈ budget_s +
    signout_budget_s + one read timeout of overshoot on a trickling answer.
    """

    def __init__(
        self,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 6.0,
        *,
        budget_s: float = 10.0,
        signout_budget_s: float = 3.0,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.budget_s = budget_s
        self.signout_budget_s = signout_budget_s
        self._sessions: dict[tuple[str, TlsPolicy], requests.Session] = {}
        self._lock = threading.Lock()
        self._open_sessions = 0
        self._failed_signouts = 0

    @property
    def open_sessions(self) -> int:
        """Device sessions signed in by this process whose sign-out has not finished yet."""
        return self._open_sessions

    @property
    def failed_signouts(self) -> int:
        """Sign-outs that failed since start: each may leave a session open on its device."""
        return self._failed_signouts

    def snapshot(self, access: DeviceAccess) -> Snapshot:
        session = self._session_for(access)
        deadline = time.monotonic() + self.budget_s
        started = time.perf_counter()
        cookies = self._sign_in(session, access, deadline)
        signed_in = time.perf_counter()
        self._count_open(+1)
        try:
            jpeg = self._fetch_snapshot(session, access, cookies, deadline)
        finally:
            snapped = time.perf_counter()
            try:
                self._sign_out(session, access, cookies)
            finally:
                self._count_open(-1)
        signed_out = time.perf_counter()
        return Snapshot(
            jpeg=jpeg,
            signin_ms=round((signed_in - started) * 1000, 1),
            snapshot_ms=round((snapped - signed_in) * 1000, 1),
            signout_ms=round((signed_out - snapped) * 1000, 1),
        )

    def probe(self, access: DeviceAccess) -> dict[str, Any]:
        """Everything `admin test-device` shows: timings, image size and the certificate's
        fingerprint (to pin it), from one real sign-in, snapshot and sign-out."""
        shot = self.snapshot(access)
        try:
            with Image.open(io.BytesIO(shot.jpeg), formats=["JPEG"]) as image:
                width, height = image.size
        except Exception:
            raise device_error(
                "snapshot_unavailable",
                f"The snapshot from {access.host} has an unreadable JPEG header",
            ) from None
        try:
            presented = read_peer_fingerprint(access.hostname, access.port, self.connect_timeout_s)
            fingerprint: str | None = display_fingerprint(presented)
        except OSError:
            fingerprint = None
        return {
            "host": access.host,
            "tls_policy": access.tls.kind,
            "certificate_sha256": fingerprint,
            "signin_ms": shot.signin_ms,
            "snapshot_ms": shot.snapshot_ms,
            "signout_ms": shot.signout_ms,
            "total_ms": round(shot.signin_ms + shot.snapshot_ms + shot.signout_ms, 1),
            "bytes": len(shot.jpeg),
            "width": width,
            "height": height,
        }

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            session.close()

    # -- the three calls ------------------------------------------------------------------

    def _sign_in(
        self, session: requests.Session, access: DeviceAccess, deadline: float
    ) -> dict[str, str]:
        form = {"username": access.username, "password": access.password}
        with self._request(
            session, access, "sign-in", "POST", SIGNIN_PATH, deadline, data=form
        ) as response:
            self._read(response, MAX_SMALL_ANSWER_BYTES, deadline, access, "sign-in")
            status = response.status_code
            cookies = _session_cookies(response.cookies)
        host = access.host
        if status in (401, 403):
            raise device_error(
                "device_auth_failed",
                f"The device at {host} rejected the connector's username or password "
                f"(HTTP {status}; not retried, to avoid locking the account)",
            )
        if status == 503:
            raise device_error(
                "device_unreachable",
                f"The device at {host} refused a new web session (HTTP 503): it may have too "
                "many open web sessions (limit 30 in total, 20 per user) or still be starting",
            )
        if not 200 <= status < 400:
            raise device_error(
                "device_unreachable",
                f"The device at {host} answered the sign-in with HTTP {status}: is its web "
                "interface enabled?",
            )
        if not cookies:
            raise device_error(
                "device_auth_failed",
                f"The device at {host} answered the sign-in (HTTP {status}) without a session "
                "cookie",
            )
        return cookies

    def _fetch_snapshot(
        self,
        session: requests.Session,
        access: DeviceAccess,
        cookies: dict[str, str],
        deadline: float,
    ) -> bytes:
        host = access.host
        with self._request(
            session, access, "snapshot", "GET", SNAPSHOT_PATH, deadline, cookies=cookies
        ) as response:
            body = self._read(response, MAX_SNAPSHOT_BYTES, deadline, access, "snapshot")
            status = response.status_code
        if status != 200:
            raise _unavailable(
                f"The device at {host} refused the snapshot (HTTP {status}): is the Remote "
                "Monitoring option key installed?"
            )
        if body is None:
            raise _unavailable(f"The snapshot from {host} is larger than 16 MiB")
        try:
            answer = json.loads(body)
        except ValueError:
            raise _unavailable(f"The snapshot answer from {host} is not JSON") from None
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, str) or not data.strip():
            raise _unavailable(
                f"The device at {host} returned no snapshot: is the Remote Monitoring option "
                "key installed?"
            )
        if data.startswith("data:"):
            data = data.partition(",")[2]
        try:
            jpeg = base64.b64decode("".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            raise _unavailable(f"The snapshot from {host} is not valid base64") from None
        if not jpeg.startswith(JPEG_MAGIC):
            raise _unavailable(f"The snapshot from {host} is not a JPEG image")
        return jpeg

    def _sign_out(
        self, session: requests.Session, access: DeviceAccess, cookies: dict[str, str]
    ) -> None:
        """Never raises: a failed sign-out is logged and counted, the caller's outcome stands."""
        deadline = time.monotonic() + self.signout_budget_s
        try:
            with self._request(
                session, access, "sign-out", "GET", SIGNOUT_PATH, deadline, cookies=cookies
            ) as response:
                self._read(response, MAX_SMALL_ANSWER_BYTES, deadline, access, "sign-out")
                status = response.status_code
            reason = None if 200 <= status < 400 else f"HTTP {status}"
        except FaceIdError as exc:
            reason = exc.message
        except Exception as exc:
            reason = type(exc).__name__
        if reason is not None:
            with self._lock:
                self._failed_signouts += 1
            log(
                "WARNING",
                "Device sign-out failed; the web session may stay open on the device",
                host=access.host,
                reason=reason,
            )

    # -- transport ------------------------------------------------------------------------

    def _session_for(self, access: DeviceAccess) -> requests.Session:
        key = (access.host, access.tls)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                session = self._sessions[key] = _new_session(access)
        return session

    def _request(
        self,
        session: requests.Session,
        access: DeviceAccess,
        step: str,
        method: str,
        path: str,
        deadline: float,
        **kwargs: Any,
    ) -> requests.Response:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _timed_out(access.host, step)
        timeout = (min(self.connect_timeout_s, left), min(self.read_timeout_s, left))
        try:
            return session.request(
                method,
                f"https://{access.host}{path}",
                timeout=timeout,
                allow_redirects=False,
                stream=True,
                **kwargs,
            )
        except requests.RequestException as exc:
            raise self._transport_error(exc, access, step) from None

    def _read(
        self,
        response: requests.Response,
        limit: int,
        deadline: float,
        access: DeviceAccess,
        step: str,
    ) -> bytes | None:
        """The body, or None when it is over `limit`; the budget is checked between reads."""
        body = bytearray()
        try:
            for chunk in response.iter_content(_CHUNK):
                body += chunk
                if len(body) > limit:
                    return None
                if time.monotonic() > deadline:
                    raise _timed_out(access.host, step)
        except requests.RequestException as exc:
            raise self._transport_error(exc, access, step) from None
        return bytes(body)

    def _transport_error(
        self, exc: requests.RequestException, access: DeviceAccess, step: str
    ) -> FaceIdError:
        host = access.host
        causes = list(_causes(exc))
        dropped = any(isinstance(c, ssl.SSLEOFError | ConnectionResetError) for c in causes)
        if isinstance(exc, requests.exceptions.SSLError) and not dropped:
            return self._tls_error(causes, access)
        if any(isinstance(c, ConnectionRefusedError) for c in causes):
            reason = "connection refused"
        elif any(
            isinstance(c, socket.gaierror | urllib3.exceptions.NameResolutionError) for c in causes
        ):
            reason = "the name does not resolve"
        elif any(_is_timeout(c) for c in causes):
            return _timed_out(host, step)
        elif dropped or any(
            isinstance(c, http.client.RemoteDisconnected | urllib3.exceptions.ProtocolError)
            for c in causes
        ):
            reason = "the device closed the connection"
        else:
            reason = type(exc).__name__
        return device_error(
            "device_unreachable",
            f"Could not reach the device's web interface at {host} during the {step}: {reason}",
        )

    def _tls_error(self, causes: list[BaseException], access: DeviceAccess) -> FaceIdError:
        host, policy = access.host, access.tls
        if policy.fingerprint_sha256 is not None:
            try:
                presented = read_peer_fingerprint(
                    access.hostname, access.port, self.connect_timeout_s
                )
                seen = f" (it presents SHA-256 {display_fingerprint(presented)})"
            except OSError:
                seen = ""
            return device_error(
                "device_tls_error",
                f"The certificate of the device at {host} does not match the pinned "
                f"fingerprint{seen}; no credentials were sent",
            )
        verify = next((c for c in causes if isinstance(c, ssl.SSLCertVerificationError)), None)
        detail = verify.verify_message if verify is not None else "TLS handshake failed"
        if policy.ca_bundle is not None:
            trust = "the configured CA bundle"
        else:
            trust = (
                "the default trusted CAs (a device's certificate is self-signed by default: "
                "configure a CA bundle or a pinned fingerprint)"
            )
        return device_error(
            "device_tls_error",
            f"The certificate of the device at {host} was not accepted with {trust}: {detail}; "
            "no credentials were sent",
        )

    def _count_open(self, delta: int) -> None:
        with self._lock:
            self._open_sessions += delta


def _new_session(access: DeviceAccess) -> requests.Session:
    policy = access.tls
    session = requests.Session()
    # Devices are on the local network: no proxy, netrc or CA bundle from the environment.
    session.trust_env = False
    session.cookies.set_policy(_NoStoredCookies())
    session.headers["User-Agent"] = "faceid-connector"
    if policy.fingerprint_sha256 is not None or policy.insecure:
        session.mount("https://", NoCaAdapter(policy.fingerprint_sha256))
        session.verify = False
    else:
        session.mount("https://", HTTPAdapter(max_retries=0))
        session.verify = policy.ca_bundle if policy.ca_bundle is not None else True
    if policy.insecure:
        log("WARNING", "TLS verification is off for this device, as configured", host=access.host)
    return session


def _session_cookies(jar: requests.cookies.RequestsCookieJar) -> dict[str, str]:
    every = {cookie.name: cookie.value or "" for cookie in jar}
    preferred = {name: value for name, value in every.items() if name in SESSION_COOKIE_NAMES}
    return preferred or every


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (requests and urllib3 nest through args/reason)."""
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


def _timed_out(host: str, step: str) -> FaceIdError:
    return device_error(
        "device_unreachable",
        f"The device at {host} did not answer the {step} in time",
    )


def _unavailable(message: str) -> FaceIdError:
    return device_error("snapshot_unavailable", message)
