"""Camera snapshots from a RoomOS device's web API: one sign-in, one snapshot, always a sign-out.

Why it is shaped this way (REFERENCE §1):
- Device web sessions never expire and are capped (30 in total, 20 per user), so every session
  the device hands out is signed out, in a `finally` with its own time budget: after a failed or
  timed-out snapshot, and whatever the sign-in's status was (a 500 or a 401 may still set a
  cookie). The cookies are read from the sign-in answer's own Set-Cookie headers, not from a
  cookie jar whose policy (domain, path) could refuse them.
- A crash must not lose a session either: given a ledger (the store), a client writes each
  session down the moment its sign-in's headers arrive, before anything uses it, and strikes it
  off once the device has signed it out; a session left on the ledger is signed out at the next
  start (`sign_out_session`, from Runtime.sign_out_leftovers). A session whose sign-in answer
  never arrived in time stays unknown to us: nobody can sign it out but a device restart.
- Five bad logins lock the account, so a call makes exactly one sign-in attempt and never
  retries (no urllib3 retries, no redirects followed).
- The session cookie's name differs by release: SessionId / SecureSessionId are preferred, else
  whatever the sign-in set, sent back explicitly per request; the pooled requests.Session
  refuses to store cookies, so concurrent calls to one device never share a session.
- Deadlines are enforced, not hoped for. requests' read timeout bounds each socket read, so a
  device trickling a byte at a time (status line, headers or body) or never ending its body
  would hold a call for ever. Each request therefore runs under a watch (`_Watch`): the pool's
  connections put their socket under the calling thread's watch (a new one as soon as its TCP
  connection exists, so the TLS handshake is covered; a pooled one before the answer's headers
  are read), and a timer shuts that socket down when the deadline passes. Whatever read is
  blocked then returns at once, and the call fails as "did not answer in time" even if what
  arrived looks complete. Bodies are read in chunks up to a size limit; a bigger one is dropped
  with its connection. Not covered by the watch: name resolution (devices are addressed by IP in
  practice) and the TCP connect itself, which the connect timeout (capped by the time left)
  bounds.
- What a device answers when its session cap is hit is unknown: a 503 on sign-in is reported
  as "too many open web sessions" (device_unreachable). A 401 or 403 is device_auth_failed.
- Every failure is a DeviceError with code device_unreachable, device_auth_failed,
  device_tls_error or snapshot_unavailable and a message naming the host, never the password;
  what went wrong below HTTP is read by transport.py, as for the function's client.
"""

from __future__ import annotations

import base64
import binascii
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from http import cookiejar
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
import urllib3
import urllib3.connection
import urllib3.response
from faceid_core.errors import DeviceError, FaceIdError, config_error
from faceid_core.images import JPEG_MAGIC
from faceid_core.logs import log
from requests.adapters import HTTPAdapter

from .tls import NoCaAdapter, display_fingerprint, normalize_fingerprint, shut_down
from .tls import peer_fingerprint as read_peer_fingerprint
from .transport import device_timed_out, device_unreachable, failure

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
    """How to reach one device. `host` is "host" or "host:port" ("[v6]:port"); always HTTPS.
    `serial` names the device on the session ledger (without it, nothing is written down)."""

    host: str
    username: str
    password: str = field(repr=False)
    tls: TlsPolicy = field(default_factory=TlsPolicy)
    serial: str | None = None

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


@dataclass(frozen=True)
class SignOut:
    """How one sign-out went: the device's HTTP status (None: no answer in time) and, when it
    failed, why (never the session id)."""

    status: int | None
    reason: str | None

    @property
    def gone(self) -> bool:
        """The device holds the session no more: signed out, or it does not know it (401/403,
        e.g. it restarted or an earlier sign-out did land)."""
        return self.reason is None or self.status in (401, 403)


class SessionLedger(Protocol):
    """Where open device sessions are written down before use (the store implements it)."""

    def record_device_session(self, serial: str, cookies: Mapping[str, str]) -> int: ...

    def forget_device_session(self, entry: int) -> None: ...


@dataclass
class _Held:
    """One device session, from its sign-in's headers until its sign-out."""

    cookies: dict[str, str] = field(default_factory=dict, repr=False)
    entry: int | None = None  # its row on the ledger


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes | None = field(repr=False)  # None: over the size limit


class _NoStoredCookies(cookiejar.DefaultCookiePolicy):
    """The pooled session must never remember a device session: cookies travel per call."""

    def set_ok(self, cookie: cookiejar.Cookie, request: Any) -> bool:
        return False


_WATCH: ContextVar[_Watch | None] = ContextVar("device_request_watch", default=None)


class _Watch:
    """One request's deadline, enforced: when it passes, every socket the request uses is shut
    down, so a blocked read returns at once however slowly the device sends (module docstring).
    While entered, it is the calling thread's watch, which the pool's connections join."""

    def __init__(self, deadline: float) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._owned: list[socket.socket] = []  # duplicates made for the watch: closed with it
        self._expired = self._stopped = False
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._expire)
        self._timer.daemon = True
        self._token: Token[_Watch | None] | None = None

    def __enter__(self) -> _Watch:
        self._token = _WATCH.set(self)
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        if self._token is not None:
            _WATCH.reset(self._token)
        for sock in self._owned:
            sock.close()

    def add(self, sock: socket.socket, *, owned: bool = False) -> None:
        with self._lock:
            self._sockets.append(sock)
            if owned:
                self._owned.append(sock)
            if self._expired:
                shut_down(sock)

    def stop(self) -> bool:
        """Disarm; True when the deadline passed first (what arrived may then be cut short)."""
        self._timer.cancel()
        with self._lock:
            self._stopped = True
            return self._expired

    def _expire(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._expired = True
            for sock in self._sockets:
                shut_down(sock)


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    """Puts its socket under the calling thread's watch: a new one as soon as it is connected
    (a duplicate: the TLS wrapper takes the original over), a pooled one before the answer's
    headers are read."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        watch = _WATCH.get()
        if watch is not None:
            watch.add(sock.dup(), owned=True)
        return sock

    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
        watch = _WATCH.get()
        if watch is not None and self.sock is not None:
            watch.add(self.sock)
        return super().getresponse()


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


def _watched(adapter: HTTPAdapter) -> HTTPAdapter:
    """The adapter's HTTPS connections enforce the deadline of the request using them."""
    manager = adapter.poolmanager
    manager.pool_classes_by_scheme = {**manager.pool_classes_by_scheme, "https": _WatchedHTTPSPool}
    return adapter


class DeviceClient:
    """Thread-safe. One pooled requests.Session per (host, TLS policy); no shared cookies.

    Time bounds: sign-in and snapshot together get `budget_s`, enforced whatever the device
    sends (module docstring); the sign-out then gets `signout_budget_s` of its own. A snapshot
    call ends within budget_s + signout_budget_s (plus a few milliseconds of scheduling).
    `ledger` records every session while it is open; `on_signout_failure` is called once per
    failed sign-out (the metrics count them).
    """

    def __init__(
        self,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 6.0,
        *,
        budget_s: float = 10.0,
        signout_budget_s: float = 3.0,
        ledger: SessionLedger | None = None,
        on_signout_failure: Callable[[], None] | None = None,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.budget_s = budget_s
        self.signout_budget_s = signout_budget_s
        self.ledger = ledger
        self.on_signout_failure = on_signout_failure
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
        held = _Held()
        started = signed_in = time.perf_counter()
        try:
            self._sign_in(session, access, deadline, held)
            signed_in = time.perf_counter()
            jpeg = self._fetch_snapshot(session, access, held.cookies, deadline)
        finally:
            snapped = time.perf_counter()
            self._release(session, access, held)
        signed_out = time.perf_counter()
        return Snapshot(
            jpeg=jpeg,
            signin_ms=round((signed_in - started) * 1000, 1),
            snapshot_ms=round((snapped - signed_in) * 1000, 1),
            signout_ms=round((signed_out - snapped) * 1000, 1),
        )

    def exchange(
        self,
        access: DeviceAccess,
        step: str,
        method: str,
        path: str,
        *,
        budget_s: float,
        limit: int = MAX_SMALL_ANSWER_BYTES,
        **kwargs: Any,
    ) -> tuple[int, bytes]:
        """One request outside any web session (the xAPI takes HTTP Basic auth per request):
        its status and body within `budget_s`, under the same trust, watch and size limit as
        the snapshot's; a DeviceError naming `step` otherwise."""
        answer = self._call(
            self._session_for(access),
            access,
            step,
            method,
            path,
            time.monotonic() + budget_s,
            limit,
            **kwargs,
        )
        if answer.body is None:
            raise DeviceError(
                "device_unreachable",
                f"The device at {access.host} answered the {step} with over {limit} bytes",
            )
        return answer.status, answer.body

    def sign_out_session(self, access: DeviceAccess, cookies: Mapping[str, str]) -> SignOut:
        """Sign out a session this client did not open (one a crash left on the ledger), within
        the sign-out budget. Never raises; a session not `gone` counts as a failed sign-out."""
        result = self._sign_out(self._session_for(access), access, dict(cookies))
        if not result.gone:
            self._count_failed_signout()
        return result

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            session.close()

    # -- the three calls ------------------------------------------------------------------

    def _sign_in(
        self, session: requests.Session, access: DeviceAccess, deadline: float, held: _Held
    ) -> None:
        """Fills `held` as soon as the answer's headers are in, whatever follows: the caller
        signs out whatever it holds."""
        form = {"username": access.username, "password": access.password}
        answer = self._call(
            session,
            access,
            "sign-in",
            "POST",
            SIGNIN_PATH,
            deadline,
            MAX_SMALL_ANSWER_BYTES,
            on_headers=lambda response: self._hold(access, held, response),
            data=form,
        )
        status, host = answer.status, access.host
        if status in (401, 403):
            raise DeviceError(
                "device_auth_failed",
                f"The device at {host} rejected the connector's username or password "
                f"(HTTP {status}; not retried, to avoid locking the account)",
            )
        if status == 503:
            raise DeviceError(
                "device_unreachable",
                f"The device at {host} refused a new web session (HTTP 503): it may have too "
                "many open web sessions (limit 30 in total, 20 per user) or still be starting",
            )
        if not 200 <= status < 400:
            raise DeviceError(
                "device_unreachable",
                f"The device at {host} answered the sign-in with HTTP {status}: is its web "
                "interface enabled?",
            )
        if answer.body is None:
            raise DeviceError(
                "device_unreachable",
                f"The device at {host} answered the sign-in with more than 64 KiB: is it a "
                "RoomOS device?",
            )
        if not held.cookies:
            raise DeviceError(
                "device_auth_failed",
                f"The device at {host} answered the sign-in (HTTP {status}) without a session "
                "cookie",
            )

    def _hold(self, access: DeviceAccess, held: _Held, response: requests.Response) -> None:
        """Right after the sign-in's headers: take the session cookies it set (whatever its
        status) and write them down before anything uses them."""
        cookies = _session_cookies(response.raw.headers.getlist("Set-Cookie"))
        if not cookies:
            return
        held.cookies = cookies
        self._count_open(+1)
        if self.ledger is not None and access.serial is not None:
            held.entry = self.ledger.record_device_session(access.serial, cookies)

    def _fetch_snapshot(
        self,
        session: requests.Session,
        access: DeviceAccess,
        cookies: dict[str, str],
        deadline: float,
    ) -> bytes:
        host = access.host
        answer = self._call(
            session,
            access,
            "snapshot",
            "GET",
            SNAPSHOT_PATH,
            deadline,
            MAX_SNAPSHOT_BYTES,
            cookies=cookies,
        )
        status, body = answer.status, answer.body
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

    def _release(self, session: requests.Session, access: DeviceAccess, held: _Held) -> None:
        """Sign out whatever session the sign-in opened; strike it off the ledger once the
        device has signed it out (else it stays there for the next start). Never raises for
        the device: a failed sign-out is logged and counted, the caller's outcome stands."""
        if not held.cookies:
            return
        try:
            result = self._sign_out(session, access, held.cookies)
            if result.reason is not None:
                self._count_failed_signout()
                log(
                    "WARNING",
                    "Device sign-out failed; the web session may stay open on the device "
                    "(signed out at the next start if the device answers then)",
                    host=access.host,
                    reason=result.reason,
                )
            elif held.entry is not None and self.ledger is not None:
                self._forget(access, held.entry)
        finally:
            self._count_open(-1)

    def _sign_out(
        self, session: requests.Session, access: DeviceAccess, cookies: dict[str, str]
    ) -> SignOut:
        deadline = time.monotonic() + self.signout_budget_s
        try:
            status = self._call(
                session,
                access,
                "sign-out",
                "GET",
                SIGNOUT_PATH,
                deadline,
                MAX_SMALL_ANSWER_BYTES,
                cookies=cookies,
            ).status
        except DeviceError as exc:
            return SignOut(None, exc.message)
        except Exception as exc:
            return SignOut(None, type(exc).__name__)
        return SignOut(status, None if 200 <= status < 400 else f"HTTP {status}")

    def _forget(self, access: DeviceAccess, entry: int) -> None:
        """A store that fails here leaves the row: the next start signs it out once more (the
        device then answers 401, and the row goes)."""
        assert self.ledger is not None
        try:
            self.ledger.forget_device_session(entry)
        except FaceIdError as exc:
            log(
                "WARNING",
                "A signed-out device session stays recorded in the store",
                host=access.host,
                reason=exc.message,
            )

    def _count_failed_signout(self) -> None:
        with self._lock:
            self._failed_signouts += 1
        if self.on_signout_failure is not None:
            self.on_signout_failure()

    # -- transport ------------------------------------------------------------------------

    def _session_for(self, access: DeviceAccess) -> requests.Session:
        key = (access.host, access.tls)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                session = self._sessions[key] = _new_session(access)
        return session

    def _call(
        self,
        session: requests.Session,
        access: DeviceAccess,
        step: str,
        method: str,
        path: str,
        deadline: float,
        limit: int,
        *,
        on_headers: Callable[[requests.Response], None] | None = None,
        **kwargs: Any,
    ) -> _Answer:
        """One request and its whole answer by `deadline`, enforced by a watch (module
        docstring). `on_headers` sees the response as soon as its headers are in. The body is
        read in chunks; over `limit`, reading stops and the connection is dropped."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise device_timed_out(access.host, step)
        timeout = (min(self.connect_timeout_s, left), min(self.read_timeout_s, left))
        with _Watch(deadline) as watch:
            try:
                with session.request(
                    method,
                    f"https://{access.host}{path}",
                    timeout=timeout,
                    allow_redirects=False,
                    stream=True,
                    **kwargs,
                ) as response:
                    if on_headers is not None:
                        on_headers(response)
                    answer = _Answer(response.status_code, _body(response, limit))
            except Exception as exc:
                if watch.stop():
                    raise device_timed_out(access.host, step) from None
                if not isinstance(exc, requests.RequestException):
                    raise
                failed = failure(exc)
                if failed.kind == "tls":
                    raise self._tls_error(failed.causes, access) from None
                raise device_unreachable(failed, access.host, step) from None
            if watch.stop():
                raise device_timed_out(access.host, step)
        return answer

    def _tls_error(self, causes: tuple[BaseException, ...], access: DeviceAccess) -> DeviceError:
        host, policy = access.host, access.tls
        if policy.fingerprint_sha256 is not None:
            try:
                presented = read_peer_fingerprint(
                    access.hostname, access.port, self.connect_timeout_s
                )
                seen = f" (it presents SHA-256 {display_fingerprint(presented)})"
            except OSError:
                seen = ""
            return DeviceError(
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
        return DeviceError(
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
        session.mount("https://", _watched(NoCaAdapter(policy.fingerprint_sha256)))
        session.verify = False
    else:
        session.mount("https://", _watched(HTTPAdapter(max_retries=0)))
        session.verify = policy.ca_bundle if policy.ca_bundle is not None else True
    if policy.insecure:
        log("WARNING", "TLS verification is off for this device, as configured", host=access.host)
    return session


def _body(response: requests.Response, limit: int) -> bytes | None:
    """The body, or None as soon as it is over `limit` (closing the response then drops the
    connection instead of reading the rest)."""
    body = bytearray()
    for chunk in response.iter_content(_CHUNK):
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _session_cookies(set_cookie_headers: Iterable[str]) -> dict[str, str]:
    """name -> value of every cookie the Set-Cookie headers set (not those they clear):
    SessionId / SecureSessionId when present, else all. Read from the headers themselves, so no
    cookie policy (domain, path, secure) can drop a session we must sign out."""
    every: dict[str, str] = {}
    for header in set_cookie_headers:
        pair, *attributes = header.split(";")
        name, sep, value = pair.partition("=")
        name, value = name.strip(), value.strip()
        if sep and name and value and not _clears(attributes):
            every[name] = value
    preferred = {name: value for name, value in every.items() if name in SESSION_COOKIE_NAMES}
    return preferred or every


def _clears(attributes: list[str]) -> bool:
    """Max-Age <= 0 or an Expires in the past: the header deletes the cookie."""
    for attribute in attributes:
        key, _, value = attribute.partition("=")
        key, value = key.strip().lower(), value.strip()
        if key == "max-age" and value.lstrip("-").isdigit() and int(value) <= 0:
            return True
        if key == "expires":
            try:
                expires = parsedate_to_datetime(value).timestamp()
            except (TypeError, ValueError, IndexError):
                continue
            if expires <= time.time():
                return True
    return False


def _unavailable(message: str) -> DeviceError:
    return DeviceError("snapshot_unavailable", message)
