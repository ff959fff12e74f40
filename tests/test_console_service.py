"""The console's listener on the real service (HAProxy's second frontend, gunicorn, the store):
its login page answers over its own HTTPS port, a login sets the session cookie as the contract
says and the session outlives a restart, the macro listener knows no console path even when a
client claims to be the console, and the console listener knows no macro API path."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
import requests

from connector.console.auth import ConsoleAuth
from connector.console.views import SECURITY_HEADERS
from devkit.hostile import HostileClient
from devkit.stack import Stack, start_stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory, admin_frames) -> Iterator[Stack]:
    started = start_stack(
        tmp_path_factory.mktemp("console"), images=admin_frames["grace_hopper"], console=True
    )
    try:
        yield started
    finally:
        started.stop()


def get(stack: Stack, url: str, timeout: float = 30, **kw) -> requests.Response:
    return requests.get(
        url, verify=str(stack.ca_path), timeout=timeout, allow_redirects=False, **kw
    )


def log_in(stack: Stack) -> requests.Response:
    assert stack.console_admin is not None
    name, password = stack.console_admin
    return requests.post(
        f"{stack.console_url}/login",
        data={"name": name, "password": password},
        verify=str(stack.ca_path),
        timeout=30,
        allow_redirects=False,
    )


def test_the_console_listener_serves_the_login_page_on_its_own_port(stack):
    assert stack.console_url and stack.console_url != stack.connector_url
    answer = get(stack, f"{stack.console_url}/login")
    assert answer.status_code == 200, answer.text[:300]
    assert answer.headers["Content-Type"].startswith("text/html")


def test_a_login_sets_a_strict_secure_session_cookie_that_outlives_a_restart(stack):
    answer = log_in(stack)
    assert answer.status_code == 303, answer.text[:300]
    cookie = answer.headers["Set-Cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert cookie.startswith(f"{ConsoleAuth.COOKIE}=")
    assert {"httponly", "secure", "samesite", "path"} <= attributes
    assert "samesite=strict" in cookie.lower().replace(" ", "")
    assert not attributes & {"max-age", "expires"}  # a session cookie
    token = answer.cookies[ConsoleAuth.COOKIE]
    cookies = {ConsoleAuth.COOKIE: token}
    assert get(stack, f"{stack.console_url}/", cookies=cookies).status_code == 200
    stack.connector.stop()  # else two would serve the port, the old one never stopped
    stack.restart_connector("connector-restarted")
    again = get(stack, f"{stack.console_url}/", cookies=cookies)
    assert again.status_code == 200  # the session lives in the store
    assert get(stack, f"{stack.console_url}/").status_code == 303  # no cookie: to the login


@pytest.mark.parametrize("path", ["/login", "/", "/audit", "/devices", "/static/console.css"])
def test_the_macro_listener_knows_no_console_path_even_when_told_it_is_the_console(stack, path):
    for headers in ({}, {"X-FaceID-Listener": "console"}):
        answer = get(stack, f"{stack.connector_url}{path}", headers=headers)
        assert answer.status_code == 404, (path, headers, answer.text[:200])
        assert answer.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/healthz"), ("GET", "/metrics"), ("POST", "/v1/verify"), ("GET", "/v1/status")],
)
def test_the_console_listener_knows_no_macro_api_path(stack, method, path):
    answer = requests.request(
        method, f"{stack.console_url}{path}", verify=str(stack.ca_path), timeout=30
    )
    assert answer.status_code == 404, answer.text[:200]
    assert answer.headers["Content-Type"].startswith("text/html")  # the console's, not the API's


# --- the console cannot take the macro API's threads ---------------------------------------------

#: Trickled uploads, more than the console's threads (admin_ui.threads, 4) and than the macro
#: API's (server.threads, 32 in the stack): one backend for both would give them every thread.
TRICKLES = 36
#: What a trickle sends at once, in pieces, before its byte a tick: more than the front buffers
#: (front.BUFFER_BYTES), so that the front passes the request on and a thread reads the rest.
PREFIX_BYTES, PIECE_BYTES = 160 * 1024, 32 * 1024
QUEUE_TIMEOUT_S = 15  # front.QUEUE_TIMEOUT_S
CSP = SECURITY_HEADERS["Content-Security-Policy"]


@dataclass
class TrickledUploads(HostileClient):
    """Signed-in photo uploads to the console whose body, once past the front's buffer, comes a
    byte a tick: each holds a console thread while it is read (devkit/hostile.py bounds them)."""

    path: str = ""
    cookie: str = ""

    def _trickle(self, kind: str) -> Iterator[bytes]:
        host = urlsplit(self.url).netloc
        yield (
            f"POST {self.path} HTTP/1.1\r\nHost: {host}\r\n"
            f"Cookie: {ConsoleAuth.COOKIE}={self.cookie}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 5000000\r\n\r\n"
            '--b\r\nContent-Disposition: form-data; name="photo"; filename="face.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        for _ in range(PREFIX_BYTES // PIECE_BYTES):
            yield b"\xff" * PIECE_BYTES
        while True:
            yield b"\xff"


def console_saturated(stack: Stack, within_s: float = 30.0) -> bool:
    """Whether the console's pages stop answering (their requests wait for a thread): two in a
    row unanswered for a few seconds, which a merely busy machine does not do."""
    deadline = time.monotonic() + within_s
    unanswered = 0
    while unanswered < 2 and time.monotonic() < deadline:
        try:
            get(stack, f"{stack.console_url}/login", timeout=3)
        except requests.Timeout:
            unanswered += 1
        else:
            unanswered = 0
            time.sleep(0.3)
    return unanswered >= 2


def test_trickled_console_uploads_leave_the_macro_api_every_thread_of_its_own(stack):
    device = stack.devices[0]
    token = log_in(stack).cookies[ConsoleAuth.COOKIE]
    trickles = TrickledUploads(
        stack.console_url,
        str(stack.ca_path),
        "127.0.0.2",
        {"slow_body": TRICKLES},
        hold_s=QUEUE_TIMEOUT_S + 60,  # ended by the test, long before
        trickle_every_s=0.1,
        path=f"/devices/{device.serial}/people",
        cookie=token,
    )
    with trickles:
        assert trickles.established()["held"] == TRICKLES
        assert console_saturated(stack), "the trickles never held the console's threads"
        for _ in range(3):  # the macro API answers while the console waits for its threads
            answer = stack.call(f"/v1/status?serial={device.serial}", device, timeout=60)
            assert answer.status_code == 200, answer.text[:300]
        started = time.monotonic()
        waited = get(stack, f"{stack.console_url}/login", timeout=QUEUE_TIMEOUT_S + 30)
        took = time.monotonic() - started
        outcomes = [(h.outcome, h.closed_after_s) for h in trickles.held]
    # the front's own refusal of a request that waited too long, as a console page
    assert waited.status_code == 503, (took, outcomes)
    assert waited.headers["Content-Type"].startswith("text/html")
    assert waited.headers["Content-Security-Policy"] == CSP
    assert waited.headers["Cache-Control"] == "no-store"
    assert get(stack, f"{stack.console_url}/login").status_code == 200  # and it serves again


@pytest.mark.parametrize(
    "path", ["/login", "/logout", "/devices/SIM0000/people/remove", "/devices/SIM0000/check"]
)
def test_the_front_refuses_a_console_body_over_16_kib_with_a_console_page(stack, path):
    answer = requests.post(
        f"{stack.console_url}{path}",
        data=b"x" * (16 * 1024 + 1),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        verify=str(stack.ca_path),
        timeout=30,
        allow_redirects=False,
    )
    assert answer.status_code == 413, answer.text[:200]
    assert answer.headers["Content-Type"].startswith("text/html")
    assert answer.headers["Content-Security-Policy"] == CSP
    assert answer.headers["Cache-Control"] == "no-store"


def test_a_login_over_8_kib_is_refused_and_an_upload_may_be_larger(stack):
    def post(path: str, size: int) -> requests.Response:
        return requests.post(
            f"{stack.console_url}{path}",
            data=b"x" * size,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            verify=str(stack.ca_path),
            timeout=30,
            allow_redirects=False,
        )

    login = post("/login", 8 * 1024 + 1)  # under the front's limit: the login view's own
    assert login.status_code == 413, login.text[:200]
    assert login.headers["Content-Security-Policy"] == CSP
    upload = post(f"/devices/{stack.devices[0].serial}/people", 200 * 1024)
    assert upload.status_code == 303  # past the front; signed out, so to the login page
