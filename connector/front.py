"""The connector's front: HAProxy, an event-driven server, holds the macros' connections so that
no client can tie up the connector's worker threads.

gunicorn's threaded worker hands every accepted connection to a thread that then waits, with no
deadline, for a request that may never come: a handful of idle or slow connections stop every
room. In front of it, HAProxy (Debian's `haproxy`, started here as a child of `serve`) terminates
TLS and passes on only whole requests, over a UNIX socket that nobody else can reach:

- `timeout http-request` with `option http-buffer-request`: headers and body must both arrive
  within `server.request_timeout_s` (a rate floor for bodies: 64 KiB in 10 s), else 408 and
  the connection is closed;
- `timeout http-keep-alive`: an idle kept-alive connection is closed after a few seconds;
- a stick table caps the connections one client address may hold open (`server.max_connections_
  per_address`); beyond it new ones are closed at once, before TLS;
- the macros' backend gets at most `server.threads` requests at a time; the rest queue in
  HAProxy, and HAProxy's own refusals are JSON in the API's error shape. (Headers that never
  arrive whole, or cannot be parsed at all, get HAProxy's own short 408 or 400 page on either
  listener: its HTTP layer answers them before any proxy's error pages apply, and HAProxy 2.6
  offers no other page there but none at all.)

The client's address reaches the app in `X-Forwarded-For`, which HAProxy sets (a client's own
value is replaced), so the failed-authentication brake still counts per address. A renewed
certificate is served without a restart: the files are watched and HAProxy reloaded (SIGUSR2 to
its master process) when they change.

With [admin_ui], a second frontend serves the administrators' console on its own address, port
and certificate, with the same limits. It marks each request it passes on (`X-FaceID-Listener:
console`) and the macros' frontend removes that header from each of its own, so the app (app.py)
tells the two apart by a header no client can set. Beyond that, the console's frontend:

- has a backend of its own on the same socket, of `admin_ui.threads` requests at a time, and
  gunicorn a thread for each request either backend may pass on (`Front.threads`): however many
  console requests wait, the macro API keeps its `server.threads`;
- refuses (413) a body over console.FORM_MAX_BYTES but on the upload route (POST to
  console.UPLOAD_PATH_RE), and any over console.MAX_BODY_BYTES. Every smaller body is buffered
  whole within `timeout http-request`. An upload's rest is streamed: HAProxy 2.6 has no deadline
  for a streamed body (`timeout client` and `timeout server` count idle time only, and its
  buffer, `tune.bufsize`, is one size for every connection: 10 MiB each would be gigabytes), so
  the console app sets that deadline itself (console.BodyDeadline);
- answers its own refusals with HTML pages that carry the console's security headers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from html import escape
from http import HTTPStatus
from pathlib import Path
from typing import Any

from faceid_core.errors import config_error
from faceid_core.logs import log

from .config import ServerConfig
from .config.schema import AdminUiConfig
from .console import FORM_MAX_BYTES, MAX_BODY_BYTES, UPLOAD_MAX_BYTES, UPLOAD_PATH_RE

HAPROXY = "haproxy"
#: Seconds HAProxy allows the connector to answer one request: the device and function budgets
#: fit well inside, and a macro gives up after 30 s anyway.
SERVER_TIMEOUT_S = 60
QUEUE_TIMEOUT_S = 15
CONNECT_TIMEOUT_S = 3
CLIENT_TIMEOUT_S = 30
#: Room for a whole 64 KiB body and its headers in one buffer (http-buffer-request).
BUFFER_BYTES = 128 * 1024
WATCH_EVERY_S = 2.0
#: The header the console's frontend sets, and the macros' frontend removes (module docstring).
LISTENER_HEADER = "X-FaceID-Listener"
CONSOLE_LISTENER = "console"
MACROS_LISTENER = "macros"
#: Statuses HAProxy may answer itself, with the code and message the macro API documents.
FRONT_ERRORS = {
    400: ("bad_request", "The request could not be read"),
    408: ("request_timeout", "The request did not arrive in time"),
    500: ("internal_error", "The connector's front failed"),
    502: ("connector_unavailable", "The connector is not answering"),
    503: ("connector_unavailable", "The connector is busy or starting; try again shortly"),
    504: ("connector_timeout", "The connector did not answer in time"),
}
#: The same on the console's listener, as a page's title and text; 413 is its body limit.
CONSOLE_ERRORS = {
    400: ("Bad request", "The request could not be read."),
    408: ("Too slow", "The request did not arrive in time. Try again."),
    413: (
        "Too large",
        f"A photo may be {UPLOAD_MAX_BYTES >> 20} MiB, and any other form far less.",
    ),
    500: ("Failed", "The connector's front failed; its log says why."),
    502: ("Unavailable", "The connector is not answering. Try again shortly."),
    503: ("Busy", "The console is busy or starting. Try again shortly."),
    504: ("Too slow", "The connector did not answer in time. Try again."),
}


@dataclass(frozen=True)
class FrontFiles:
    """Where the front's generated files live (a private temporary folder)."""

    folder: Path

    @property
    def config(self) -> Path:
        return self.folder / "haproxy.cfg"

    @property
    def backend_socket(self) -> Path:
        return self.folder / "connector.sock"

    @property
    def pem(self) -> Path:
        return self.folder / "connector.pem"

    @property
    def console_pem(self) -> Path:
        return self.folder / "console.pem"

    def errorfile(self, listener: str, status: int) -> Path:
        return self.folder / f"{listener}-{status}.http"


def haproxy_binary() -> str:
    path = shutil.which(HAPROXY)
    if path is None:
        raise config_error(
            "HAProxy is not installed: the connector serves through it "
            "(Debian/Ubuntu: `apt-get install haproxy`)"
        )
    return path


@dataclass(frozen=True)
class Listener:
    """One frontend: where it listens, with which certificate (none: plain HTTP), the PEM file
    HAProxy reads that certificate and its key from, and how many requests its backend passes
    on at a time."""

    name: str
    host: str
    port: int
    tls_cert: str | None
    tls_key: str | None
    pem: Path
    threads: int

    @property
    def bind_address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def listeners(
    server: ServerConfig, files: FrontFiles, admin_ui: AdminUiConfig | None = None
) -> Iterator[Listener]:
    """The macros' frontend, then the console's when [admin_ui] is set."""
    yield Listener(
        MACROS_LISTENER,
        server.host,
        server.port,
        server.tls_cert,
        server.tls_key,
        files.pem,
        server.threads,
    )
    if admin_ui is not None:
        yield Listener(
            CONSOLE_LISTENER,
            admin_ui.host,
            admin_ui.port,
            admin_ui.tls_cert,
            admin_ui.tls_key,
            files.console_pem,
            admin_ui.threads,
        )


def client_address(environ: Mapping[str, Any]) -> str:
    """The client's address. Over the private UNIX socket, where only the front can connect, it
    is the X-Forwarded-For that the front sets, never the client's own."""
    return str(environ.get("REMOTE_ADDR") or environ.get("HTTP_X_FORWARDED_FOR") or "unknown")


def _raw_response(status: int, headers: Mapping[str, str], body: str) -> str:
    """A whole HTTP response as HAProxy's errorfile holds it."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines += ["Connection: close", f"Content-Length: {len(body.encode())}", "", body]
    return "\r\n".join(lines)


def _error_response(status: int, code: str, message: str) -> str:
    body = json.dumps({"error": {"code": code, "message": message}}, ensure_ascii=True)
    headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
    return _raw_response(status, headers, body)


def _console_page(status: int, title: str, message: str, *, tls: bool) -> str:
    """A console page of its own (no inline style or script: the console's CSP allows neither),
    with the headers of every console answer."""
    # Imported here: the console's views import this module.
    from .console.views import HSTS, SECURITY_HEADERS

    headers = {"Content-Type": "text/html; charset=utf-8", **SECURITY_HEADERS}
    if tls:
        headers["Strict-Transport-Security"] = HSTS
    body = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{escape(title)} &middot; Face login console</title>
  <link rel="stylesheet" href="/static/console.css">
</head>
<body>
  <main id="main">
    <h1>{escape(title)}</h1>
    <p class="notice notice-error" role="alert">{escape(message)}</p>
    <p><a href="/">Back to the overview</a></p>
  </main>
</body>
</html>
"""
    return _raw_response(status, headers, body)


def _error_pages(listener: Listener) -> dict[int, str]:
    """Each status HAProxy may answer on this listener, and its errorfile's text."""
    if listener.name == CONSOLE_LISTENER:
        tls = bool(listener.tls_cert)
        return {
            status: _console_page(status, title, message, tls=tls)
            for status, (title, message) in CONSOLE_ERRORS.items()
        }
    return {
        status: _error_response(status, code, message)
        for status, (code, message) in FRONT_ERRORS.items()
    }


def _body_limits() -> str:
    """The console frontend's refusals of large bodies (module docstring). With
    http-buffer-request these rules see the whole body, or a full buffer, already there."""
    small = f"{{ req.body_size gt {FORM_MAX_BYTES} }}"
    return f"""    acl upload_route path_reg {UPLOAD_PATH_RE}
    http-request deny deny_status 413 if {small} !{{ method POST }}
    http-request deny deny_status 413 if {small} !upload_route
    http-request deny deny_status 413 if {{ req.body_size gt {MAX_BODY_BYTES} }}
"""


def _frontend(listener: Listener, server: ServerConfig) -> str:
    """A frontend block: the same connection limits for every listener; only the console's
    limits bodies and marks its requests, and the macros' removes any mark a client sent."""
    tls = f" ssl crt {listener.pem}" if listener.tls_cert else ""
    console = listener.name == CONSOLE_LISTENER
    mark = (
        f"set-header {LISTENER_HEADER} {CONSOLE_LISTENER}"
        if console
        else f"del-header {LISTENER_HEADER}"
    )
    return f"""frontend {listener.name}
    bind {listener.bind_address}{tls}
    errorfiles {listener.name}
    stick-table type ipv6 size 100k expire 60s store conn_cur
    tcp-request connection track-sc0 src
    tcp-request connection reject if {{ sc0_conn_cur gt {server.max_connections_per_address} }}
{_body_limits() if console else ""}    http-request set-header X-Forwarded-For %[src]
    http-request {mark}
    default_backend {listener.name}
"""


def _backend(listener: Listener, files: FrontFiles) -> str:
    """A listener's own backend: the same socket, its own count of requests at a time (the rest
    wait in HAProxy, up to `timeout queue`), its own refusals."""
    return f"""backend {listener.name}
    errorfiles {listener.name}
    server app unix@{files.backend_socket} maxconn {listener.threads}
"""


def _errors(listener: Listener, files: FrontFiles) -> str:
    lines = (
        f"    errorfile {status} {files.errorfile(listener.name, status)}"
        for status in _error_pages(listener)
    )
    return f"http-errors {listener.name}\n" + "\n".join(lines) + "\n"


def config_text(
    server: ServerConfig, files: FrontFiles, admin_ui: AdminUiConfig | None = None
) -> str:
    """HAProxy's configuration for these settings (module docstring)."""
    each = list(listeners(server, files, admin_ui))
    errors = "\n".join(_errors(one, files) for one in each)
    frontends = "\n".join(_frontend(one, server) for one in each)
    backends = "\n".join(_backend(one, files) for one in each)
    return f"""# Generated by connector/front.py; rewritten at every start.
global
    maxconn 4096
    tune.bufsize {BUFFER_BYTES}
    log stderr format short local0 warning

defaults
    mode http
    log global
    option dontlognull
    option http-buffer-request
    option http-server-close
    timeout connect {CONNECT_TIMEOUT_S}s
    timeout client {CLIENT_TIMEOUT_S}s
    timeout server {SERVER_TIMEOUT_S}s
    timeout queue {QUEUE_TIMEOUT_S}s
    timeout http-request {server.request_timeout_s}s
    timeout http-keep-alive {server.keepalive_timeout_s}s

{errors}
{frontends}
{backends}"""


def write_files(
    server: ServerConfig, files: FrontFiles, admin_ui: AdminUiConfig | None = None
) -> None:
    each = list(listeners(server, files, admin_ui))
    for listener in each:
        for status, text in _error_pages(listener).items():
            files.errorfile(listener.name, status).write_text(text, encoding="utf-8")
    _write_pems(each)
    files.config.write_text(config_text(server, files, admin_ui))


def _write_pems(secured: list[Listener]) -> None:
    """HAProxy reads certificate and key from one file: written private, replaced whole."""
    for listener in secured:
        if not (listener.tls_cert and listener.tls_key):
            continue
        cert = Path(listener.tls_cert).read_bytes()
        key = Path(listener.tls_key).read_bytes()
        data = cert.rstrip(b"\n") + b"\n" + key
        partial = listener.pem.with_suffix(".tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(partial, listener.pem)


def _stamp(secured: list[Listener]) -> tuple[int, ...] | None:
    try:
        return tuple(
            os.stat(path).st_mtime_ns
            for listener in secured
            for path in (listener.tls_cert, listener.tls_key)
            if path
        )
    except OSError:
        return None


class Front:
    """HAProxy as a child process, for as long as `serve` runs: started before the connector,
    reloaded when the certificate changes, stopped with it. `on_exit` is called if it dies."""

    def __init__(
        self,
        server: ServerConfig,
        on_exit: Callable[[int], None],
        admin_ui: AdminUiConfig | None = None,
    ) -> None:
        self.server = server
        self.admin_ui = admin_ui
        self.files = FrontFiles(Path(tempfile.mkdtemp(prefix="faceid-front-")))
        self.listeners = list(listeners(server, self.files, admin_ui))
        self._on_exit = on_exit
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()

    @property
    def backend_bind(self) -> str:
        return f"unix:{self.files.backend_socket}"

    @property
    def threads(self) -> int:
        """The requests the backends may pass on at once: gunicorn needs a thread for each."""
        return sum(listener.threads for listener in self.listeners)

    def start(self) -> None:
        binary = haproxy_binary()
        write_files(self.server, self.files, self.admin_ui)
        check = subprocess.run(
            [binary, "-c", "-q", "-f", str(self.files.config)],
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode != 0:
            raise config_error(f"HAProxy refused its configuration: {check.stderr.strip()[-500:]}")
        # -W: master-worker, so SIGUSR2 reloads; -db: stay in the foreground, as our child.
        self._process = subprocess.Popen([binary, "-W", "-db", "-f", str(self.files.config)])
        threading.Thread(target=self._watch, name="faceid-front", daemon=True).start()

    def _watch(self) -> None:
        stamp = _stamp(self.listeners)
        process = self._process
        assert process is not None
        while not self._stopping.wait(WATCH_EVERY_S):
            code = process.poll()
            if code is not None:
                if not self._stopping.is_set():
                    log("ERROR", "the connector's front (HAProxy) exited", code=code)
                    self._on_exit(code)
                return
            now = _stamp(self.listeners)
            if now and now != stamp:
                stamp = now
                try:
                    _write_pems(self.listeners)
                    process.send_signal(signal.SIGUSR2)
                    log("INFO", "certificate changed: the front serves the new one")
                except OSError as exc:
                    log("WARNING", "could not reload the certificate", error=exc.strerror)

    def stop(self) -> None:
        self._stopping.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGUSR1)  # soft stop: finish what is in flight
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        shutil.rmtree(self.files.folder, ignore_errors=True)

    def wait_until_listening(self, timeout_s: float = 10.0) -> None:
        """Returns once HAProxy accepts connections on every listener's address."""
        deadline = time.monotonic() + timeout_s
        for listener in self.listeners:
            self._wait_for(listener, deadline)

    def _wait_for(self, listener: Listener, deadline: float) -> None:
        host = "127.0.0.1" if listener.host in ("0.0.0.0", "::") else listener.host
        while True:
            process = self._process
            if process is not None and process.poll() is not None:
                raise config_error(
                    f"HAProxy could not serve {listener.bind_address} (exited with "
                    f"{process.returncode}; is the port in use?)"
                )
            try:
                with socket.create_connection((host, listener.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise config_error(
                        f"HAProxy does not listen on {listener.bind_address}"
                    ) from None
                time.sleep(0.05)
