"""The one lifecycle of every fake server (and of the device simulator) on 127.0.0.1.

A server is bound when it is made, so its `port` and `url` are known before anything talks to
it; `start()` serves from a background thread, `close()` stops serving and frees the port (safe
before `start()` and twice); `with Server() as server:` does both. HTTP/1.1 on a threading server
by default: a subclass gives its request handler in `handler()`. One that speaks another protocol
(the gRPC Secret Manager) overrides `_bind`, `_serve` and `_shutdown` instead.

    with FakeWebex() as webex:
        requests.post(webex.url + "/v1/messages", ...)
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

HOST = "127.0.0.1"


class LoopbackServer:
    """Base of the fakes; `scheme` is what `url` starts with (the simulator's is https)."""

    scheme = "http"
    #: Ignore errors of a connection the client reset, instead of printing their traceback.
    quiet_errors = False

    def __init__(self, *, port: int = 0) -> None:
        self._http: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._serving = False
        self._port = self._bind(port)

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        """host:port, for clients that take no URL (gRPC, `*_EMULATOR_HOST` variables)."""
        return f"{HOST}:{self._port}"

    @property
    def url(self) -> str:
        """The server's root, `scheme://127.0.0.1:PORT` (no path, no trailing slash)."""
        return f"{self.scheme}://{self.address}"

    def start(self) -> Self:
        """Serve from a background thread (once: later calls do nothing)."""
        if not self._serving:
            self._serve()
            self._serving = True
        return self

    def close(self) -> None:
        """Stop serving and free the port for good (a closed server does not start again)."""
        self._shutdown()

    def serve_forever(self) -> None:
        """Serve until interrupted, for a fake in a process of its own."""
        self.start()
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            self.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the transport: HTTP unless a subclass overrides these ----------------------------------

    def handler(self) -> type[BaseHTTPRequestHandler]:
        """The request handler class; it reaches this server through a closure or `server`."""
        raise NotImplementedError(f"{type(self).__name__} serves HTTP: give handler()")

    def _http_server(self, port: int) -> ThreadingHTTPServer:
        """The bound HTTP server; the simulator's negotiates TLS per connection."""
        server = ThreadingHTTPServer((HOST, port), self.handler())
        server.daemon_threads = True
        return server

    def _bind(self, port: int) -> int:
        self._http = self._http_server(port)
        if self.quiet_errors:
            self._http.handle_error = lambda *_: None  # type: ignore[method-assign]
        return int(self._http.server_address[1])

    def _serve(self) -> None:
        assert self._http is not None
        self._thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}-{self._port}",
            daemon=True,
        )
        self._thread.start()

    def _shutdown(self) -> None:
        if self._http is None:
            return
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join()
            self._thread = None
        self._http.server_close()
        self._http = None
