"""The console's listener, in memory: the front's configuration (a second frontend with its own
bind and certificate, the same connection limits, the listener header set there and removed on
the macros' frontend, a backend of its own with admin_ui.threads slots and gunicorn a thread for
each slot of both, small bodies but on the upload route, HTML error pages with the console's
headers), the login's own body limit, an upload's deadline, and the app's dispatch by that
header: console requests reach the console app alone, every other request the macro API alone,
each side answering 404 for the other's paths. The pages are stood in for by a two-route
blueprint where the rules hold whatever the pages are."""

from __future__ import annotations

import dataclasses
import io
import re
import socket
import sys
import threading
import time
import types
from typing import Any

import pytest
from flask import Blueprint, g, request
from flask.testing import FlaskClient

import connector.console
import connector.server
from connector.app import create_app
from connector.config.schema import AdminUiConfig, ServerConfig
from connector.console import (
    FORM_MAX_BYTES,
    LOGIN_MAX_BYTES,
    MAX_BODY_BYTES,
    UPLOAD_PATH_RE,
    console_app,
)
from connector.console.auth import new_password_hash
from connector.console.views import HSTS, SECURITY_HEADERS
from connector.front import (
    CONSOLE_LISTENER,
    FRONT_ERRORS,
    LISTENER_HEADER,
    FrontFiles,
    config_text,
    write_files,
)
from connector.runtime import Runtime
from tests.support.memory_runtime import SERIALS, Rig

CONSOLE = {LISTENER_HEADER: CONSOLE_LISTENER}
UI = AdminUiConfig(host="127.0.0.1", port=9444)


def stand_in_blueprint(rt: Runtime, auth: object) -> Blueprint:
    bp = Blueprint("console", __name__)

    @bp.get("/login")
    def login() -> str:
        return f"login page {g.request_id}"

    @bp.post("/upload")
    def upload() -> str:
        return type(request.files["photo"].stream).__name__

    return bp


@pytest.fixture
def with_console(rig: Rig, monkeypatch) -> Rig:
    views = types.ModuleType("connector.console.views")
    views.console_blueprint = stand_in_blueprint  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "connector.console.views", views)
    rig.rt.config = dataclasses.replace(rig.rt.config, admin_ui=UI)
    return rig


@pytest.fixture
def client(with_console: Rig) -> FlaskClient:
    return create_app(with_console.rt).test_client()


# --- the front ---------------------------------------------------------------------------------


def sections(text: str, kind: str = "frontend") -> dict[str, list[str]]:
    """Each block's lines of one kind (frontend, backend, http-errors), by name."""
    blocks: dict[str, list[str]] = {}
    for block in text.split(f"\n{kind} ")[1:]:
        name, *lines = block.split("\n\n")[0].splitlines()
        blocks[name] = [line.strip() for line in lines]
    return blocks


frontends = sections
#: The console frontend's lines that the macros' has not: its mark and its body limits.
CONSOLE_ONLY = ("Listener", "upload_route", "req.body_size")


def test_the_console_gets_a_frontend_of_its_own_with_the_same_connection_limits(tmp_path):
    files = FrontFiles(tmp_path)
    server = ServerConfig(port=8443, tls_cert="c.pem", tls_key="k.pem")
    ui = dataclasses.replace(UI, tls_cert="ui.pem", tls_key="ui.key")
    blocks = frontends(config_text(server, files, ui))
    assert list(blocks) == ["macros", "console"]
    macros, console = blocks["macros"], blocks["console"]
    assert macros[0] == f"bind 127.0.0.1:8443 ssl crt {files.pem}"
    assert console[0] == f"bind 127.0.0.1:9444 ssl crt {files.console_pem}"
    assert "http-request del-header X-FaceID-Listener" in macros
    assert "http-request set-header X-FaceID-Listener console" in console

    def shared(lines: list[str], name: str) -> list[str]:
        return [
            line.replace(name, "NAME")
            for line in lines[1:]
            if not any(word in line for word in CONSOLE_ONLY)
        ]

    # everything else alike: the connection cap, X-Forwarded-For, a backend of its name
    assert shared(console, "console") == shared(macros, "macros")


def test_each_listener_has_a_backend_of_its_own_with_its_threads_on_the_one_socket(tmp_path):
    files = FrontFiles(tmp_path)
    text = config_text(ServerConfig(threads=16), files, dataclasses.replace(UI, threads=3))
    assert "default_backend macros" in frontends(text)["macros"]
    assert "default_backend console" in frontends(text)["console"]
    backends = sections(text, "backend")
    assert list(backends) == ["macros", "console"]
    assert backends["macros"][-1] == f"server app unix@{files.backend_socket} maxconn 16"
    assert backends["console"][-1] == f"server app unix@{files.backend_socket} maxconn 3"


@pytest.mark.parametrize(("ui", "threads"), [(None, 16), (dataclasses.replace(UI, threads=3), 19)])
def test_gunicorn_has_a_thread_for_every_request_either_backend_may_pass_on(
    monkeypatch, ui, threads
):
    """So console requests, however many wait, never take one of server.threads."""
    seen: dict[str, Any] = {}

    class Captured:
        def __init__(self, _factory: object, options: dict[str, Any]) -> None:
            seen.update(options)

        def run(self) -> None:
            pass

    monkeypatch.setattr(connector.server, "ConnectorServer", Captured)
    connector.server.serve(lambda: None, server=ServerConfig(threads=16), admin_ui=ui)
    assert seen["threads"] == threads


def test_the_console_frontend_refuses_large_bodies_but_on_the_upload_route(tmp_path):
    console = frontends(config_text(ServerConfig(), FrontFiles(tmp_path), UI))["console"]
    small = f"{{ req.body_size gt {FORM_MAX_BYTES} }}"
    rules = [
        f"acl upload_route path_reg {UPLOAD_PATH_RE}",
        f"http-request deny deny_status 413 if {small} !{{ method POST }}",
        f"http-request deny deny_status 413 if {small} !upload_route",
        f"http-request deny deny_status 413 if {{ req.body_size gt {MAX_BODY_BYTES} }}",
    ]
    at = console.index(rules[0])
    assert console[at : at + 4] == rules
    assert at < console.index("default_backend console")
    assert "option http-buffer-request" in config_text(ServerConfig(), FrontFiles(tmp_path), UI)


def test_the_upload_pattern_matches_the_upload_route_and_no_other_post(rig):
    rig.rt.config = dataclasses.replace(rig.rt.config, admin_ui=UI)
    app = console_app(rig.rt)
    assert app is not None
    pattern = re.compile(UPLOAD_PATH_RE)
    posts = [rule for rule in app.url_map.iter_rules() if "POST" in (rule.methods or ())]
    assert len(posts) > 5
    for rule in posts:
        path = re.sub(r"<(?:\w+:)?\w+>", "1", rule.rule)  # any value its converter takes
        assert bool(pattern.match(path)) == (rule.endpoint == "console.upload"), rule.rule
    assert pattern.match("/devices/SIM0000/people")
    assert not pattern.match("/devices/SIM0000/people/remove")


def head_of(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, body = raw.split(b"\r\n\r\n", 1)
    status, *lines = head.decode().split("\r\n")
    return status, dict(line.split(": ", 1) for line in lines), body


@pytest.mark.parametrize("tls", [False, True])
def test_the_console_listener_answers_its_front_refusals_with_console_pages(tmp_path, tls):
    files = FrontFiles(tmp_path)
    ui = UI
    if tls:  # the files' contents do not matter here: HAProxy is not started
        (tmp_path / "ui.pem").write_text("cert\n")
        (tmp_path / "ui.key").write_text("key\n")
        ui = dataclasses.replace(
            UI, tls_cert=str(tmp_path / "ui.pem"), tls_key=str(tmp_path / "ui.key")
        )
    write_files(ServerConfig(), files, ui)
    text = files.config.read_text()
    pages = sections(text, "http-errors")["console"]
    statuses = [int(line.split()[1]) for line in pages]
    assert {400, 408, 413, 502, 503, 504} <= set(statuses)
    for line, status in zip(pages, statuses, strict=True):
        assert line == f"errorfile {status} {files.errorfile('console', status)}"
        first, headers, body = head_of(files.errorfile("console", status).read_bytes())
        assert first.startswith(f"HTTP/1.1 {status} ")
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        assert {k: headers[k] for k in SECURITY_HEADERS} == SECURITY_HEADERS  # CSP, no-store
        assert headers.get("Strict-Transport-Security") == (HSTS if tls else None)
        assert int(headers["Content-Length"]) == len(body)
        assert body.startswith(b"<!doctype html>") and b"<script" not in body
    assert "errorfiles console" in frontends(text)["console"]
    assert "errorfiles console" in sections(text, "backend")["console"]  # its queue's 503


def test_the_macros_listener_keeps_the_api_json_refusals(tmp_path):
    files = FrontFiles(tmp_path)
    write_files(ServerConfig(), files, UI)
    text = files.config.read_text()
    assert "errorfile" not in text.split("\ndefaults\n")[1].split("\n\n")[0]
    assert "errorfiles macros" in frontends(text)["macros"]
    assert "errorfiles macros" in sections(text, "backend")["macros"]
    for status, (code, _message) in FRONT_ERRORS.items():
        first, headers, body = head_of(files.errorfile("macros", status).read_bytes())
        assert first.startswith(f"HTTP/1.1 {status} ")
        assert headers["Content-Type"] == "application/json"
        assert headers["Cache-Control"] == "no-store"
        assert body.startswith(b'{"error": {"code": "' + code.encode())


def test_without_admin_ui_the_front_has_only_the_macros_frontend(tmp_path):
    text = config_text(ServerConfig(), FrontFiles(tmp_path))
    assert list(frontends(text)) == ["macros"]
    assert "del-header X-FaceID-Listener" in text


def test_a_console_on_loopback_without_certificates_is_plain_http(tmp_path):
    blocks = frontends(config_text(ServerConfig(), FrontFiles(tmp_path), UI))
    assert blocks["console"][0] == "bind 127.0.0.1:9444"


def test_an_ipv6_console_address_is_bracketed(tmp_path):
    ui = dataclasses.replace(UI, host="::1")
    assert frontends(config_text(ServerConfig(), FrontFiles(tmp_path), ui))["console"][0] == (
        "bind [::1]:9444"
    )


# --- the dispatch ------------------------------------------------------------------------------


def test_the_console_listener_reaches_the_console(client):
    answer = client.get("/login", headers=CONSOLE)
    assert answer.status_code == 200
    assert answer.text.startswith("login page ") and len(answer.text) == len("login page ") + 32


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/verify"),
        ("GET", "/v1/verify"),  # 404, not the macro API's 405
        ("GET", "/v1/status"),
        ("POST", "/v1/enroll"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
    ],
)
def test_no_macro_api_route_answers_on_the_console_listener(client, method, path):
    assert client.open(path, method=method, headers=CONSOLE).status_code == 404


@pytest.mark.parametrize(("method", "path"), [("GET", "/login"), ("PUT", "/login")])
def test_no_console_route_answers_on_the_macro_listener(client, method, path):
    answer = client.open(path, method=method)
    assert answer.status_code == 404  # not a 405 that would say the path exists
    assert answer.json == {"error": {"code": "not_found", "message": "Unknown path"}}
    other = client.open(path, method=method, headers={LISTENER_HEADER: "macros"})
    assert other.status_code == 404


def test_the_macro_api_still_answers_on_its_listener(client):
    assert client.get("/healthz").status_code == 200


def test_without_admin_ui_a_console_request_reaches_nothing(rig):
    client = create_app(rig.rt).test_client()
    assert client.get("/healthz", headers=CONSOLE).status_code == 404
    assert client.get("/healthz").status_code == 200


def test_console_uploads_stay_in_memory_and_are_bounded(client):
    photo = (io.BytesIO(b"\xff\xd8" + b"\0" * 600_000), "face.jpg")  # over werkzeug's spool size
    answer = client.post("/upload", data={"photo": photo}, headers=CONSOLE)
    assert answer.status_code == 200 and answer.text == "BytesIO"
    huge = (io.BytesIO(b"\0" * (MAX_BODY_BYTES + 1)), "huge.jpg")
    assert client.post("/upload", data={"photo": huge}, headers=CONSOLE).status_code == 413


# --- the console's own limits, on its real pages -------------------------------------------------


class Unreadable(io.RawIOBase):
    """A body that must not be read."""

    def readable(self) -> bool:
        return True

    def readinto(self, _buffer: Any) -> int:
        raise AssertionError("the body was read")


@pytest.fixture
def console_client(rig: Rig) -> FlaskClient:
    rig.rt.config = dataclasses.replace(rig.rt.config, admin_ui=UI)
    return create_app(rig.rt).test_client()


@pytest.mark.parametrize("length", [LOGIN_MAX_BYTES + 1, None])
def test_a_login_over_8_kib_or_of_unknown_length_is_refused_unread(console_client, length):
    body = {"wsgi.input": Unreadable()}
    length_header = (
        {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True}  # as gunicorn sets
        if length is None
        else {"CONTENT_LENGTH": str(length)}
    )
    answer = console_client.post(
        "/login",
        headers=CONSOLE,
        content_type="application/x-www-form-urlencoded",
        environ_overrides=body | length_header,
    )
    assert answer.status_code == 413, answer.text[:300]
    assert answer.mimetype == "text/html"


def test_a_login_within_8_kib_is_read(console_client):
    padding = "x" * (LOGIN_MAX_BYTES - 100)
    data = {"name": "nobody", "password": "wrong", "pad": padding}
    answer = console_client.post("/login", data=data, headers=CONSOLE)
    assert answer.status_code == 403  # read, and the account refused


def test_an_upload_the_front_passed_on_must_arrive_whole_by_its_deadline(
    rig, console_client, monkeypatch
):
    """gunicorn hands the app its socket: the rest of a trickled upload is cut at the deadline
    and answered 408, so it holds a console thread no longer (a socket pair stands in)."""
    monkeypatch.setattr(connector.console, "UPLOAD_DEADLINE_S", 0.5)
    rig.store.add_admin("ada", new_password_hash("correct horse battery"))
    client = create_app(rig.rt).test_client()
    signed_in = client.post(
        "/login", data={"name": "ada", "password": "correct horse battery"}, headers=CONSOLE
    )
    assert signed_in.status_code == 303
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(
            b'--b\r\nContent-Disposition: form-data; name="photo"; filename="face.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + b"\xff" * 1000
        )  # and then nothing more, for 20 s: then the end of the body, too late
        too_late = threading.Timer(20, theirs.shutdown, (socket.SHUT_WR,))
        too_late.start()
        started = time.monotonic()
        answer = client.post(
            f"/devices/{SERIALS[0]}/people",
            headers=CONSOLE,
            content_type="multipart/form-data; boundary=b",
            environ_overrides={
                "wsgi.input": ours.makefile("rb"),
                "CONTENT_LENGTH": "5000000",
                "gunicorn.socket": ours,
            },
        )
        took = time.monotonic() - started
        too_late.cancel()
    assert answer.status_code == 408, answer.text[:300]
    assert answer.mimetype == "text/html"
    assert took < 20  # not the client's pace


def test_the_console_app_serves_no_files_of_the_folder_it_runs_in(
    with_console, tmp_path, monkeypatch
):
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "x.txt").write_text("not for the console")
    (tmp_path / "templates").mkdir()
    monkeypatch.chdir(tmp_path)
    client = create_app(with_console.rt).test_client()
    assert client.get("/static/x.txt", headers=CONSOLE).status_code == 404
