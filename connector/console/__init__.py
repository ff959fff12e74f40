"""The administrators' web console (issue 19): server-rendered pages on devices, people and the
audit log, behind their own listener of the front (front.py, [admin_ui]).

The console is a Flask app of its own, beside the macro API's (app.py hands it the requests the
console's frontend marked), so that neither listener can reach a route of the other: their URL
maps are apart. auth.py holds the accounts and sessions; views.py and the modules it registers
hold the pages (`console_blueprint`); templates/ and static/ are theirs.

Bodies are small but on one route, and the front (front.py) refuses any other over
FORM_MAX_BYTES. The front buffers a body whole only up to its buffer, within
`server.request_timeout_s`; beyond that it streams it, with only an idle timeout. So an upload's
rest must arrive within UPLOAD_DEADLINE_S, or its read side is shut and it is answered 408
(BodyDeadline); it holds one of the console's threads (admin_ui.threads) meanwhile, never one of
the macro API's.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING

from flask import Flask, Request
from werkzeug.exceptions import RequestTimeout

from ..runtime import Runtime
from .auth import ConsoleAuth

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

#: The largest photo an administrator may upload; a request may be a little larger (the form).
UPLOAD_MAX_BYTES = 10 * 1024 * 1024
MAX_BODY_BYTES = UPLOAD_MAX_BYTES + 64 * 1024
#: The largest body of any other console request (its forms hold a few short fields).
FORM_MAX_BYTES = 16 * 1024
#: The largest sign-in form: read before anyone is signed in, so smaller still.
LOGIN_MAX_BYTES = 8 * 1024
#: The one route taking a larger body, POST /devices/<serial>/people (people.py), as the front
#: matches it (an HAProxy path_reg).
UPLOAD_PATH_RE = r"^/devices/[^/]+/people$"
#: A body the front passed on before it was whole must arrive within this: a 10 MiB photo at
#: 1.5 Mbit/s.
UPLOAD_DEADLINE_S = 60.0


class InMemoryRequest(Request):
    """Uploaded files are read into memory (at most MAX_BODY_BYTES), never spooled to a
    temporary file: a photo of a face is not left on a disk."""

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return io.BytesIO()


class _DeadlineInput:
    """wsgi.input that raises RequestTimeout once its request's deadline has passed."""

    def __init__(self, stream: IO[bytes], expired: threading.Event) -> None:
        self._stream = stream
        self._expired = expired

    def read(self, size: int = -1) -> bytes:
        return self._checked(self._stream.read(size))

    def readline(self, size: int = -1) -> bytes:
        return self._checked(self._stream.readline(size))

    def _checked(self, data: bytes) -> bytes:
        if self._expired.is_set():
            raise RequestTimeout("The upload did not arrive in time; send it again")
        return data


class BodyDeadline:
    """WSGI middleware: a request whose body may be longer than the front buffers must have all
    of it within `seconds`. A read blocked on a socket wakes only when the socket's read side is
    shut, so at the deadline a timer shuts it (the answer can still be written); the read then
    ends early and raises RequestTimeout (408). Without gunicorn's socket (tests), no deadline."""

    def __init__(self, app: WSGIApplication, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        sock = environ.get("gunicorn.socket")
        if not isinstance(sock, socket.socket) or not _may_be_streamed(environ):
            return self.app(environ, start_response)
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)

        timer = threading.Timer(self.seconds, expire)
        timer.daemon = True
        environ["wsgi.input"] = _DeadlineInput(environ["wsgi.input"], expired)
        timer.start()
        try:
            return self.app(environ, start_response)
        finally:
            timer.cancel()


def _may_be_streamed(environ: WSGIEnvironment) -> bool:
    """A body over FORM_MAX_BYTES, or of unknown length: the front may have passed it on before
    it was whole."""
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return True
    try:
        return int(environ.get("CONTENT_LENGTH") or 0) > FORM_MAX_BYTES
    except ValueError:
        return False


def console_app(rt: Runtime) -> Flask | None:
    """The console's app on `rt`, None without [admin_ui]. It has no templates or static files
    of its own (the blueprint's are the only ones, wherever the service runs from)."""
    if rt.config.admin_ui is None:
        return None
    from .views import console_blueprint  # the pages import from this package's modules

    app = Flask(__name__, static_folder=None, template_folder=None)
    app.request_class = InMemoryRequest
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.wsgi_app = BodyDeadline(app.wsgi_app, UPLOAD_DEADLINE_S)  # type: ignore[method-assign]
    auth = ConsoleAuth(rt.store, rt.config.admin_ui, rt.clock)
    app.register_blueprint(console_blueprint(rt, auth))
    return app
