"""A simulated RoomOS device over HTTPS on 127.0.0.1: its web API and its HTTP xAPI, for tests,
benchmarks and the demo.

Web API (REFERENCE §1): form sign-in setting a session cookie, base64 JPEG snapshot, sign-out;
sessions never expire; at most 30 sessions in total and 20 per user; 5 bad logins lock the
account (401 even with the right password) for `lockout_s`.

HTTP xAPI (REFERENCE §6), what provisioning uses: the device's state, rules and XML answers are
in devkit/xapi_device.py (with their [U] choices); here, HTTP Basic auth of a local account,
whose bad passwords count toward the same lockout, `GET /getxml?location=...` (any account) and
`POST /putxml` (an Admin account, `Content-Type: text/xml`, at most 1 MiB). Accounts: `accounts`
have the User role (enough for the web API), `admins` the Admin role (web API and putxml).

Choices where a real device's answer is unknown [U]:
- session cap reached: sign-in answers 503, text body "Maximum number of sessions reached";
- no Remote Monitoring option key: the snapshot answers 403, text body naming the option key;
- sign-out without a valid session: 401; sign-in success: 200 with a small JSON body;
- xAPI without valid Basic credentials, or locked out: 401 with `WWW-Authenticate: Basic`;
  putxml by a User account: 403; another Content-Type: 415; getxml without one `location`: 400
  (these three with `<Error status="Error"><Reason>`).

Switches (command line, in-process `set_mode`, or `POST /_sim/control` with the header
`X-Sim-Control: <token>` and a JSON object body): no_option_key, black (lid closed: a black
1920x1080 frame), slow_s and slow_on (delay the listed endpoints: signin, snapshot, signout,
getxml, putxml), down (reset every device request's connection, xAPI included; /_sim/* keeps
working so it can come back up), fault (a malformed snapshot answer: garbage_json,
missing_data, empty_data, bad_base64, not_jpeg), images (a file or folder, cycled per
snapshot), reset_stats. `GET /_sim/stats` (same header) reports the counters; `GET
/_sim/macros` the saved macros, restarts and "running" (`macros()` in-process); `GET
/_sim/config` every configuration leaf and the trusted CAs' SHA-256 fingerprints
(`configuration()`; `set_configuration()` presets a leaf, e.g. HttpClient Mode On).

Transport faults, per endpoint (in-process or through /_sim/control only): trickle_ms and
trickle_on (the listed endpoints' answer bodies go out one byte every trickle_ms; with
trickle_headers, the status line and headers too), endless_on (headers, then a chunked body that
never ends: a small chunk every 20 ms until the client goes), huge_on (a body larger than the
client's MAX_SNAPSHOT_BYTES, at full speed). The device does its work first: a trickled sign-in
has opened its session, a trickled sign-out has closed it. Sign-in oddities: signin_status (the
status of a granted sign-in's answer, which still opens the session and sets its cookie, e.g.
500) and cookie_attrs (attributes appended to its Set-Cookie, e.g. "Domain=elsewhere.invalid",
which a client's cookie policy refuses).

Run: `python -m devkit.simulator --account-env SIM_ACCOUNT --admin-env SIM_ADMIN --images
photo.jpg`; the first stdout line is the URL, then `fingerprint <SHA-256>`, `control-token
<token>`, `serial <serial>` (with `--devices N`, these four lines once per device, all with the
same control token; `--serial S` then gives S-0, S-1, ...). All instances in one process share
one generated key and certificate, so fifty devices cost fifty sockets.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import hmac
import io
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import parse_qs

from PIL import Image, ImageOps

from connector.device import MAX_SNAPSHOT_BYTES, SIGNIN_PATH, SIGNOUT_PATH
from connector.tls import display_fingerprint, pem_fingerprint
from devkit.certs import self_signed_identity
from devkit.fakes.loopback import HOST, LoopbackServer
from devkit.xapi_device import XapiDevice, error_answer

SNAPSHOT_ROUTE = "/web/api/snapshot/get_b64"
ENDPOINTS = frozenset({"signin", "snapshot", "signout", "getxml", "putxml"})
FAULTS = frozenset({"garbage_json", "missing_data", "empty_data", "bad_base64", "not_jpeg"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
CAMERA_SIZE = (1920, 1080)
MAX_BODY = 64 * 1024
MAX_XAPI_BODY = 1024 * 1024  # a macro's source fits many times over
ENDPOINT_SETS = ("slow_on", "trickle_on", "endless_on", "huge_on")
HUGE_BODY_BYTES = MAX_SNAPSHOT_BYTES + 1024 * 1024
ENDLESS_CHUNK = b" " * 256  # JSON whitespace: the body stays "valid so far" for ever
ENDLESS_EVERY_S = 0.02

Role = Literal["Admin", "User"]
NO_ADMINS: Mapping[str, str] = MappingProxyType({})
BASIC_CHALLENGE = 'Basic realm="RoomOS"'
PUTXML_PATH = "/putxml"
XML = "text/xml"


@dataclass(frozen=True)
class Mode:
    no_option_key: bool = False
    black: bool = False
    slow_s: float = 0.0
    slow_on: frozenset[str] = ENDPOINTS
    down: bool = False
    fault: str | None = None
    trickle_ms: float = 0.0
    trickle_on: frozenset[str] = ENDPOINTS
    trickle_headers: bool = False
    endless_on: frozenset[str] = frozenset()
    huge_on: frozenset[str] = frozenset()
    signin_status: int = 200
    cookie_attrs: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: sorted(v) if isinstance(v, frozenset) else v for k, v in asdict(self).items()}


@dataclass
class Stats:
    device_requests: int = 0
    signin_attempts: int = 0
    signins: int = 0
    failed_logins: int = 0
    signouts: int = 0
    snapshots_served: int = 0
    session_limit_refusals: int = 0
    getxml_requests: int = 0
    putxml_requests: int = 0


@dataclass
class _Account:
    failures: int = 0
    locked_until: float = 0.0


@dataclass(frozen=True)
class _Identity:
    cert_pem: bytes
    cert_path: str
    fingerprint: str
    context: ssl.SSLContext = field(repr=False)


_identity_lock = threading.Lock()


def _identity() -> _Identity:
    """One key and certificate per process, written once to a private temporary folder."""
    with _identity_lock:
        return _make_identity()


@cache
def _make_identity() -> _Identity:
    cert_pem, key_pem = self_signed_identity(["127.0.0.1", "localhost"])
    folder = tempfile.mkdtemp(prefix="roomos-sim-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    cert_path, key_path = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    Path(cert_path).write_bytes(cert_pem)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    os.remove(key_path)  # the context holds the key; only the certificate stays on disk
    return _Identity(cert_pem, cert_path, display_fingerprint(pem_fingerprint(cert_pem)), context)


def _encode_jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


@cache
def black_frame() -> bytes:
    """What a device with its camera lid closed sends: a black full-HD frame."""
    return _encode_jpeg(Image.new("RGB", CAMERA_SIZE))


def _frame(data: bytes, size: tuple[int, int] | None) -> bytes:
    """A camera frame: JPEG as given, or converted (PNG) and padded to `size` with black bars."""
    if data.startswith(b"\xff\xd8\xff") and size is None:
        return data
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        rgb = image.convert("RGB")
    return _encode_jpeg(ImageOps.pad(rgb, size) if size else rgb)


def load_frames(
    images: str | os.PathLike[str] | Sequence[bytes] | None, size: tuple[int, int] | None = None
) -> list[bytes]:
    """JPEG frames from a file, a folder (sorted) or raw JPEG/PNG bytes; None gives a grey frame."""
    if images is None:
        sources = [_encode_jpeg(Image.new("RGB", (640, 480), (128, 128, 128)))]
    elif isinstance(images, str | os.PathLike):
        path = Path(images)
        files = (
            sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if path.is_dir()
            else [path]
        )
        sources = [p.read_bytes() for p in files]
    else:
        sources = list(images)
    if not sources:
        raise ValueError(f"No .jpg/.jpeg/.png image in {images}")
    return [_frame(data, size) for data in sources]


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    size = (int(width), int(height))
    if min(size) < 1 or max(size) > 8192:
        raise ValueError(f"Bad size {text!r}: expected WIDTHxHEIGHT, e.g. 1920x1080")
    return size


def new_serial() -> str:
    """A serial shaped like a real one: FOC and 8 hexadecimal digits."""
    return "FOC" + secrets.token_hex(4).upper()


class DeviceSimulator(LoopbackServer):
    """One simulated device. `with DeviceSimulator(accounts={"admin": pw}) as sim:` serves at
    `sim.url` (https://127.0.0.1:PORT); `sim.host` is what DeviceAccess.host takes. `accounts`
    have the User role, `admins` (e.g. `admins={"provisioner": pw}`) the Admin role."""

    scheme = "https"

    def __init__(
        self,
        accounts: Mapping[str, str],
        images: str | os.PathLike[str] | Sequence[bytes] | None = None,
        *,
        port: int = 0,
        size: tuple[int, int] | None = None,
        control_token: str | None = None,
        cookie_name: str = "SessionId",
        max_total_sessions: int = 30,
        max_sessions_per_user: int = 20,
        max_failed_logins: int = 5,
        lockout_s: float = 60.0,
        mode: Mode | None = None,
        admins: Mapping[str, str] = NO_ADMINS,
        serial: str | None = None,
    ) -> None:
        both = sorted(set(accounts) & set(admins))
        if both:
            raise ValueError(f"An account is User or Admin, not both: {', '.join(both)}")
        self.serial = new_serial() if serial is None else serial
        if not self.serial or any(c.isspace() or not c.isprintable() for c in self.serial):
            raise ValueError("A serial is one word of printable characters")
        self.accounts = dict(accounts)
        self.admins = dict(admins)
        self.size = size
        self.control_token = control_token or secrets.token_urlsafe(18)
        self.cookie_name = cookie_name
        self.max_total_sessions = max_total_sessions
        self.max_sessions_per_user = max_sessions_per_user
        self.max_failed_logins = max_failed_logins
        self.lockout_s = lockout_s
        self.mode = mode or Mode()
        self._frames = load_frames(images, size)
        self._next_frame = 0
        self._sessions: dict[str, str] = {}
        self._accounts_state: dict[str, _Account] = {}
        self._stats = Stats()
        self._xapi = XapiDevice()
        self._lock = threading.Lock()
        super().__init__(port=port)

    # -- the server and addresses ----------------------------------------------------------

    def _http_server(self, port: int) -> ThreadingHTTPServer:
        return _Server((HOST, port), self, _identity().context)

    @property
    def host(self) -> str:
        """What DeviceAccess.host takes: 127.0.0.1:PORT."""
        return self.address

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the served certificate, `AB:CD:...`."""
        return _identity().fingerprint

    @property
    def ca_pem_path(self) -> str:
        """The self-signed certificate as a PEM file: usable as a CA bundle."""
        return _identity().cert_path

    @property
    def cert_pem(self) -> bytes:
        return _identity().cert_pem

    # -- switches and counters -------------------------------------------------------------

    def set_mode(self, **switches: Any) -> Mode:
        """Change switches at run time (see the module docstring); unknown names are refused."""
        switches = dict(switches)
        images = switches.pop("images", None)
        if switches.pop("reset_stats", False):
            self.reset_stats()
        unknown = set(switches) - {f for f in Mode.__dataclass_fields__}
        if unknown:
            raise ValueError(f"Unknown switch(es): {', '.join(sorted(unknown))}")
        for name in ENDPOINT_SETS:
            if name in switches:
                switches[name] = frozenset(switches[name])
                if not switches[name] <= ENDPOINTS:
                    raise ValueError(f"{name} takes endpoints among {sorted(ENDPOINTS)}")
        if switches.get("fault") not in FAULTS | {None}:
            raise ValueError(f"fault is one of {sorted(FAULTS)} or null")
        for name in ("slow_s", "trickle_ms"):
            if name in switches:
                switches[name] = float(switches[name])
                if switches[name] < 0:
                    raise ValueError(f"{name} is not negative")
        for name in ("no_option_key", "black", "down", "trickle_headers"):
            if name in switches and not isinstance(switches[name], bool):
                raise ValueError(f"{name} is true or false")
        status = switches.get("signin_status", 200)
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError("signin_status is an HTTP status, 100 to 599")
        attrs = switches.get("cookie_attrs", "")
        if not isinstance(attrs, str) or any(c in attrs for c in "\r\n"):
            raise ValueError("cookie_attrs is one line of text")
        frames = load_frames(images, self.size) if images is not None else None
        with self._lock:
            self.mode = replace(self.mode, **switches)
            if frames is not None:
                self._frames, self._next_frame = frames, 0
            return self.mode

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            return {
                **asdict(self._stats),
                "open_sessions": len(self._sessions),
                "locked_accounts": sum(
                    1 for a in self._accounts_state.values() if a.locked_until > now
                ),
            }

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = Stats()

    def macros(self) -> dict[str, Any]:
        """What `GET /_sim/macros` answers: {"macros": [{"name", "active", "source"}...],
        "restarts": N, "running": [the names active at the last runtime restart]}."""
        return self._xapi.macros()

    def configuration(self) -> dict[str, Any]:
        """What `GET /_sim/config` answers: every leaf ("Macros Mode": "Off", ...) and
        "ca_certificates", the trusted CAs' SHA-256 fingerprints (`AB:CD:...`)."""
        return self._xapi.configuration()

    def set_configuration(self, path: str, value: str) -> None:
        """Set a leaf as an administrator would have, e.g. ("HttpClient Mode", "On")."""
        self._xapi.set_configuration(path, value)

    def drop_sessions(self) -> int:
        """Forget every session, as a device restart would; returns how many there were."""
        with self._lock:
            count, self._sessions = len(self._sessions), {}
            return count

    # -- device behaviour (called by the handler) -------------------------------------------

    def count_request(self) -> None:
        with self._lock:
            self._stats.device_requests += 1

    def count_xapi(self, endpoint: Literal["getxml", "putxml"]) -> None:
        with self._lock:
            if endpoint == "getxml":
                self._stats.getxml_requests += 1
            else:
                self._stats.putxml_requests += 1

    def _password_ok(self, username: str, password: str, now: float) -> bool:
        """The one password check of web sign-in and xAPI, with its lockout (lock held)."""
        account = self._accounts_state.setdefault(username, _Account())
        if account.locked_until > now:
            self._stats.failed_logins += 1
            return False
        if account.locked_until:
            account.failures, account.locked_until = 0, 0.0
        expected = self.admins.get(username, self.accounts.get(username))
        if expected is None or not hmac.compare_digest(expected.encode(), password.encode()):
            self._stats.failed_logins += 1
            account.failures += 1
            if account.failures >= self.max_failed_logins:
                account.locked_until = now + self.lockout_s
            return False
        account.failures = 0
        return True

    def authenticate(self, username: str, password: str) -> Role | None:
        """The role of an xAPI request's Basic credentials; None when refused."""
        with self._lock:
            if not self._password_ok(username, password, time.monotonic()):
                return None
        return "Admin" if username in self.admins else "User"

    def sign_in(self, username: str, password: str) -> tuple[int, str | None]:
        """(HTTP status, session id or None)."""
        now = time.monotonic()
        with self._lock:
            self._stats.signin_attempts += 1
            if not self._password_ok(username, password, now):
                return 401, None
            per_user = sum(1 for user in self._sessions.values() if user == username)
            if (
                len(self._sessions) >= self.max_total_sessions
                or per_user >= self.max_sessions_per_user
            ):
                self._stats.session_limit_refusals += 1
                return 503, None
            session_id = secrets.token_urlsafe(24)
            self._sessions[session_id] = username
            self._stats.signins += 1
            return 200, session_id

    def has_session(self, session_id: str | None) -> bool:
        with self._lock:
            return session_id is not None and session_id in self._sessions

    def sign_out(self, session_id: str | None) -> bool:
        with self._lock:
            if session_id is None or self._sessions.pop(session_id, None) is None:
                return False
            self._stats.signouts += 1
            return True

    def getxml(self, location: str) -> tuple[int, bytes]:
        """(HTTP status, XML) of `GET /getxml?location=...`."""
        return self._xapi.getxml(
            location, serial=self.serial, remote_monitoring=not self.mode.no_option_key
        )

    def putxml(self, body: bytes) -> tuple[int, bytes]:
        """(HTTP status, XML) of an Admin's `POST /putxml`."""
        return self._xapi.putxml(body)

    def next_frame(self) -> bytes:
        with self._lock:
            frame = black_frame() if self.mode.black else self._frames[self._next_frame]
            if not self.mode.black:
                self._next_frame = (self._next_frame + 1) % len(self._frames)
            self._stats.snapshots_served += 1
            return frame


class _Server(ThreadingHTTPServer):
    """TLS is negotiated in each connection's own thread so a slow client never stalls accept."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], sim: DeviceSimulator, context: ssl.SSLContext
    ) -> None:
        self.sim = sim
        self.context = context
        self._connections: set[ssl.SSLSocket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(10)
        # Headers and body go out as separate writes: without this, Nagle adds ~40 ms each.
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            connection = self.context.wrap_socket(request, server_side=True)
        except OSError:
            return
        with self._connections_lock:
            self._connections.add(connection)
        try:
            _Handler(connection, client_address, self)
        except OSError:
            pass
        finally:
            with self._connections_lock:
                self._connections.discard(connection)
            connection.close()

    def server_close(self) -> None:
        """Also end the connections still open: a closed device answers nobody."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        super().server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "RoomOS-simulator"
    sys_version = ""
    timeout = 30
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: requests are counted in the stats; bodies hold passwords."""

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def _route(self, method: str) -> None:
        self._endpoint: str | None = None  # set once routed: the transport faults apply to it
        path, _, query = self.path.partition("?")
        body = self._body(MAX_XAPI_BODY if path == PUTXML_PATH else MAX_BODY)
        if body is None:
            return
        sim = self.server.sim
        if path.startswith("/_sim/"):
            self._control(method, path, body)
            return
        sim.count_request()
        if sim.mode.down:
            self._reset()
            return
        routes = {
            ("POST", SIGNIN_PATH): ("signin", self._sign_in),
            ("GET", SNAPSHOT_ROUTE): ("snapshot", self._snapshot),
            ("GET", SIGNOUT_PATH): ("signout", self._sign_out),
            ("GET", "/getxml"): ("getxml", self._getxml),
            ("POST", PUTXML_PATH): ("putxml", self._putxml),
        }
        route = routes.get((method, path))
        if route is None:
            self._send(404, b"Not Found")
            return
        endpoint, handler = route
        self._endpoint = endpoint
        mode = sim.mode
        if mode.slow_s > 0 and endpoint in mode.slow_on:
            time.sleep(mode.slow_s)
        handler(query, body)

    def _sign_in(self, query: str, body: bytes) -> None:
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        usernames, passwords = form.get("username", []), form.get("password", [])
        content_type = self.headers.get("Content-Type", "")
        if (
            not content_type.startswith("application/x-www-form-urlencoded")
            or len(usernames) != 1
            or len(passwords) != 1
        ):
            self._send(400, b"Bad Request")
            return
        status, session_id = self.server.sim.sign_in(usernames[0], passwords[0])
        if status == 503:
            self._send(503, b"Maximum number of sessions reached")
        elif session_id is None:
            self._send(401, b"Unauthorized")
        else:
            mode = self.server.sim.mode
            cookie = f"{self.server.sim.cookie_name}={session_id}; Path=/; Secure; HttpOnly"
            if mode.cookie_attrs:
                cookie += f"; {mode.cookie_attrs}"
            body = b'{"result":"ok"}' if mode.signin_status == 200 else b'{"result":"error"}'
            headers = [("Set-Cookie", cookie)]
            self._send(mode.signin_status, body, "application/json", headers)

    def _snapshot(self, query: str, body: bytes) -> None:
        sim = self.server.sim
        if not sim.has_session(self._session_id()):
            self._send(401, b"Unauthorized")
            return
        params = parse_qs(query)
        if params.get("SourceType") != ["localInput"] or params.get("SourceId") != ["1"]:
            self._send(400, b"Bad Request: unknown source")
            return
        mode = sim.mode
        if mode.no_option_key:
            self._send(403, b"Forbidden: the RemoteMonitoring option key is not installed")
            return
        if mode.fault is not None:
            self._send(200, *_FAULTY_ANSWERS[mode.fault])
            return
        data = base64.b64encode(sim.next_frame())
        self._send(200, b'{"data":"' + data + b'"}', "application/json")

    def _sign_out(self, query: str, body: bytes) -> None:
        if self.server.sim.sign_out(self._session_id()):
            self._send(200, b'{"result":"ok"}', "application/json")
        else:
            self._send(401, b"Unauthorized")

    def _getxml(self, query: str, body: bytes) -> None:
        sim = self.server.sim
        sim.count_xapi("getxml")
        if self._xapi_role() is None:
            return
        locations = parse_qs(query, keep_blank_values=True).get("location", [])
        if len(locations) != 1:
            reason = "Give one location, e.g. /Status/SystemUnit"
            self._send(400, error_answer(reason), XML)
            return
        self._send(*sim.getxml(locations[0]), XML)

    def _putxml(self, query: str, body: bytes) -> None:
        sim = self.server.sim
        sim.count_xapi("putxml")
        role = self._xapi_role()
        if role is None:
            return
        if role != "Admin":
            reason = "Forbidden: putxml needs an account with the Admin role"
            self._send(403, error_answer(reason), XML)
        elif self.headers.get_content_type() != XML:
            self._send(415, error_answer(f"Content-Type must be {XML}"), XML)
        else:
            self._send(*sim.putxml(body), XML)

    def _xapi_role(self) -> Role | None:
        """The role of the request's Basic credentials, or None once 401 is answered."""
        scheme, _, encoded = self.headers.get("Authorization", "").partition(" ")
        role: Role | None = None
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
            except ValueError:  # binascii.Error and UnicodeDecodeError both are
                decoded = ""
            user, colon, password = decoded.partition(":")
            if colon:
                role = self.server.sim.authenticate(user, password)
        if role is None:
            self._send(401, b"Unauthorized", headers=[("WWW-Authenticate", BASIC_CHALLENGE)])
        return role

    def _control(self, method: str, path: str, body: bytes) -> None:
        sim = self.server.sim
        token = self.headers.get("X-Sim-Control", "")
        if not hmac.compare_digest(token.encode(), sim.control_token.encode()):
            self._send(403, b"Forbidden")
            return
        if (method, path) == ("GET", "/_sim/stats"):
            self._send_json(200, sim.stats())
        elif (method, path) == ("GET", "/_sim/macros"):
            self._send_json(200, sim.macros())
        elif (method, path) == ("GET", "/_sim/config"):
            self._send_json(200, sim.configuration())
        elif (method, path) == ("POST", "/_sim/control"):
            try:
                switches = json.loads(body or b"{}")
                if not isinstance(switches, dict):
                    raise ValueError("the body must be a JSON object")
                mode = sim.set_mode(**switches)
            except (ValueError, TypeError, OSError) as exc:
                self._send_json(400, {"error": str(exc)})
                return
            self._send_json(200, {"mode": mode.to_json()})
        else:
            self._send(404, b"Not Found")

    # -- plumbing ------------------------------------------------------------------------

    def _body(self, limit: int) -> bytes | None:
        """The request body (at most `limit` bytes); None when the request was refused."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= limit:
            self.close_connection = True
            self._send(413, b"Payload Too Large")
            return None
        return self.rfile.read(length) if length else b""

    def _session_id(self) -> str | None:
        try:
            morsel = SimpleCookie(self.headers.get("Cookie", "")).get(self.server.sim.cookie_name)
        except CookieError:
            return None
        return morsel.value if morsel is not None else None

    def _reset(self) -> None:
        """Drop the connection with a TCP reset, as a dead web server behind the port would."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def _send_json(self, status: int, payload: object) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        mode, endpoint = self.server.sim.mode, getattr(self, "_endpoint", None)
        if endpoint is not None and _shaped(mode, endpoint):
            self._send_shaped(mode, endpoint, status, body, content_type, headers)
            return
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:  # as a real server says so when the client asked to close
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _send_shaped(
        self,
        mode: Mode,
        endpoint: str,
        status: int,
        body: bytes,
        content_type: str,
        headers: Sequence[tuple[str, str]],
    ) -> None:
        """The answer as the transport faults of `mode` shape it (module docstring)."""
        self.close_connection = True
        endless, huge = endpoint in mode.endless_on, endpoint in mode.huge_on
        framing = (
            "Transfer-Encoding: chunked"
            if endless
            else f"Content-Length: {HUGE_BODY_BYTES if huge else len(body)}"
        )
        lines = [
            f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}",
            f"Server: {self.version_string()}",
            f"Date: {self.date_time_string()}",
            f"Content-Type: {content_type}",
            framing,
            "Connection: close",
            *(f"{name}: {value}" for name, value in headers),
        ]
        pace_s = mode.trickle_ms / 1000 if endpoint in mode.trickle_on else 0.0
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._write(head, pace_s if mode.trickle_headers else 0.0)
        for part in _shaped_body(body, endless=endless, huge=huge):
            self._write(part, pace_s)

    def _write(self, data: bytes, pace_s: float) -> None:
        """At once, or one byte every pace_s; a client that went away ends it (OSError)."""
        if pace_s <= 0:
            self.wfile.write(data)
            return
        for i in range(len(data)):
            self.wfile.write(data[i : i + 1])
            time.sleep(pace_s)


def _shaped(mode: Mode, endpoint: str) -> bool:
    trickled = mode.trickle_ms > 0 and endpoint in mode.trickle_on
    return trickled or endpoint in mode.endless_on or endpoint in mode.huge_on


def _shaped_body(body: bytes, *, endless: bool, huge: bool) -> Iterator[bytes]:
    if huge:  # the start of a snapshot answer that goes on past any sane size
        start = b'{"data":"'
        yield start
        block, left = b"A" * 65536, HUGE_BODY_BYTES - len(start)
        while left > 0:
            yield block[:left]
            left -= len(block)
    elif endless:
        while True:
            yield b"%x\r\n%s\r\n" % (len(ENDLESS_CHUNK), ENDLESS_CHUNK)
            time.sleep(ENDLESS_EVERY_S)
    else:
        yield body


_FAULTY_ANSWERS: dict[str, tuple[bytes, str]] = {
    "garbage_json": (b"<html><body>Internal error</body></html>", "text/html"),
    "missing_data": (b'{"status":"ok"}', "application/json"),
    "empty_data": (b'{"data":""}', "application/json"),
    "bad_base64": (b'{"data":"%%% not base64 %%%"}', "application/json"),
    "not_jpeg": (b'{"data":"' + base64.b64encode(b"GIF89a not a jpeg") + b'"}', "application/json"),
}


def _accounts(option: str, pairs: Sequence[str], env_names: Sequence[str]) -> dict[str, str]:
    """The user:password pairs of --OPTION and --OPTION-env."""
    accounts: dict[str, str] = {}
    values = list(pairs)
    for name in env_names:
        value = os.environ.get(name)
        if value is None:
            raise SystemExit(f"--{option}-env: the variable {name} is not set")
        values.append(value)
    for value in values:
        user, sep, password = value.partition(":")
        if not sep or not user:
            raise SystemExit(f"--{option}: an account is written user:password")
        accounts[user] = password
    return accounts


def _serials(serial: str | None, devices: int) -> list[str | None]:
    """One per device: generated, the given one, or (several devices) the given one + -i."""
    if serial is None:
        return [None] * devices
    return [serial] if devices == 1 else [f"{serial}-{i}" for i in range(devices)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.simulator",
        description="Simulated RoomOS device: web API and HTTP xAPI (HTTPS on 127.0.0.1).",
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--devices", type=int, default=1, help="devices served by this process (ports: --port + i)"
    )
    parser.add_argument("--images", help="JPEG/PNG file or folder (cycled per snapshot)")
    parser.add_argument("--size", type=parse_size, help="rescale frames, e.g. 1920x1080")
    parser.add_argument("--account", action="append", default=[], help="user:password")
    parser.add_argument(
        "--account-env", action="append", default=[], help="variable holding user:password"
    )
    parser.add_argument("--admin", action="append", default=[], help="user:password (Admin role)")
    parser.add_argument(
        "--admin-env", action="append", default=[], help="variable holding user:password (Admin)"
    )
    parser.add_argument(
        "--serial", help="default: FOC + 8 hex digits (several devices: S-0, S-1..)"
    )
    parser.add_argument("--control-token", help="default: a random token, printed")
    parser.add_argument("--cert-out", help="write the certificate PEM here (a CA bundle)")
    parser.add_argument("--cookie-name", default="SessionId")
    parser.add_argument("--lockout-s", type=float, default=60.0)
    parser.add_argument("--no-option-key", action="store_true")
    parser.add_argument("--black", action="store_true")
    parser.add_argument("--slow", type=float, default=0.0, help="seconds of delay")
    parser.add_argument(
        "--slow-on", action="append", choices=sorted(ENDPOINTS), help="default: all endpoints"
    )
    parser.add_argument("--down", action="store_true")
    args = parser.parse_args(argv)

    mode = Mode(
        no_option_key=args.no_option_key,
        black=args.black,
        slow_s=args.slow,
        slow_on=frozenset(args.slow_on or ENDPOINTS),
        down=args.down,
    )
    if args.devices < 1:
        raise SystemExit("--devices is at least 1")
    accounts = _accounts("account", args.account, args.account_env)
    admins = _accounts("admin", args.admin, args.admin_env)
    if not accounts and not admins:
        raise SystemExit("Give at least one --account, --account-env, --admin or --admin-env")
    control_token = args.control_token or secrets.token_urlsafe(18)
    try:
        sims = [
            DeviceSimulator(
                accounts,
                args.images,
                port=args.port + i if args.port else 0,
                size=args.size,
                control_token=control_token,
                cookie_name=args.cookie_name,
                lockout_s=args.lockout_s,
                mode=mode,
                admins=admins,
                serial=serial,
            )
            for i, serial in enumerate(_serials(args.serial, args.devices))
        ]
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if args.cert_out:
        Path(args.cert_out).write_bytes(sims[0].cert_pem)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    for sim in sims:
        sim.start()
        print(sim.url)
        print(f"fingerprint {sim.fingerprint}")
        print(f"control-token {sim.control_token}")
        print(f"serial {sim.serial}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        for sim in sims:
            sim.close()


if __name__ == "__main__":
    main()
