"""The connector's check of the function (FunctionClient.reachable, behind /healthz): a GET to the
function's /ready with the same ID token as a comparison; "ok" only when the function says it is
ready, "failing: <its reason>" when it says why it is not, and a short reason for the rest."""

from __future__ import annotations

import base64
import secrets
import time
from typing import Any

import pytest

from connector.app import create_app
from connector.config import FunctionConfig, load_config
from connector.relay import MAX_MESSAGE_CHARS, FunctionClient
from connector.runtime import build_runtime
from devkit.fakes.function import (
    FakeFunction,
    Reply,
    failing_answer,
    json_reply,
    ready_answer,
)
from devkit.fakes.google_token import FakeGoogleTokenServer, ServiceAccountKey
from devkit.procs import free_port

NO_KEY = "no MXFace key: set MXFACE_KEY or MXFACE_KEY_SECRET"


@pytest.fixture
def function():
    with FakeFunction() as fake:
        yield fake


def client_for(url: str, **config: Any) -> FunctionClient:
    return FunctionClient(FunctionConfig(url=url, auth="none", audience=url, **config))


def reason_for(function: FakeFunction, reply: Reply) -> str | None:
    function.reply = lambda *_: reply
    client = client_for(function.url)
    try:
        return client.reachable()
    finally:
        client.close()


def test_a_ready_function_is_up_and_only_its_ready_path_is_asked(function):
    assert reason_for(function, ready_answer("mxface")) is None
    ((path, _, body),) = function.seen
    assert (path, body) == ("/ready", None)  # a GET, no image


def test_the_ready_path_sits_under_the_functions_url_as_inspect_does(function):
    client = client_for(function.url + "/verify_faces/")
    assert client.reachable() is None
    client.close()
    assert [path for path, _, _ in function.seen] == ["/verify_faces/ready"]


@pytest.mark.usefixtures("no_google_metadata")
def test_the_probe_carries_the_same_id_token_as_a_comparison(function, tmp_path):
    account = ServiceAccountKey.generate()
    with FakeGoogleTokenServer(account) as google:
        key_file = account.write(tmp_path / "invoker.json", google.token_uri)
        config = FunctionConfig(url=function.url, audience=function.url, credentials_file=key_file)
        client = FunctionClient(config)
        assert client.reachable() is None
        client.close()
        scheme, token = function.seen[0][1]["authorization"].split(" ", 1)
        assert scheme == "Bearer" and google.verify(token, audience=function.url)


def test_a_function_that_says_it_cannot_work_is_failing_with_its_reason(function):
    assert reason_for(function, failing_answer(NO_KEY)) == f"failing: {NO_KEY}"


def test_the_functions_reason_is_made_printable_and_bounded(function):
    reason = reason_for(function, failing_answer("key\x1b[2J gone" + "x" * 1000))
    assert reason is not None and reason.startswith("failing: key[2J gone")
    assert len(reason) == len("failing: ") + MAX_MESSAGE_CHARS


def test_a_failing_answer_without_a_reason_still_says_failing(function):
    reply = json_reply({"status": "failing", "code": "config_error"}, 503)
    assert reason_for(function, reply) == "failing: config_error"
    assert reason_for(function, json_reply({"status": "failing"}, 503)) == (
        "failing: the comparison service gave no reason"
    )


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        pytest.param(
            (503, {"Content-Type": "text/html"}, b"<html>Service Unavailable</html>"),
            "the comparison service answered an unexpected HTTP 503",
            id="platform_503",
        ),
        pytest.param(
            json_reply({"status": "ready"}, 500),
            "the comparison service answered an unexpected HTTP 500",
            id="ready_body_with_500",
        ),
        pytest.param(
            json_reply({"status": "up"}),
            "the comparison service answered an unexpected HTTP 200",
            id="200_not_ready",
        ),
        pytest.param(
            json_reply({"error": {"code": "method_not_allowed", "message": "Use POST"}}, 405),
            "the comparison service answered an unexpected HTTP 405",
            id="the_old_probes_405_is_not_up",
        ),
        pytest.param(
            (401, {}, b""),
            "the comparison service refused the connector's credentials (HTTP 401)",
            id="401",
        ),
        pytest.param(
            (403, {}, b""),
            "the comparison service refused the connector's credentials (HTTP 403)",
            id="403",
        ),
    ],
)
def test_any_other_answer_is_not_up_and_says_what_came(function, reply, reason):
    assert reason_for(function, reply) == reason


def test_a_function_without_ready_says_to_check_the_url_or_redeploy(function):
    reply = json_reply({"error": {"code": "not_found", "message": "Unknown path"}}, 404)
    reason = reason_for(function, reply)
    assert reason is not None and "no GET /ready (HTTP 404)" in reason
    assert "function.url" in reason


def test_a_closed_port_is_unreachable():
    client = client_for(f"http://127.0.0.1:{free_port()}")
    assert client.reachable() == "the comparison service is unreachable"
    client.close()


def test_a_function_that_does_not_answer_in_time_is_not_waited_for(function):
    def slow(*_: Any) -> Reply:
        time.sleep(5)
        return ready_answer()

    function.reply = slow
    client = client_for(function.url)
    started = time.monotonic()
    assert client.reachable() == "the comparison service did not answer in time"
    assert time.monotonic() - started < 4.9  # its own read timeout (3 s), not the function's 5 s
    client.close()


# -- /healthz ----------------------------------------------------------------------------------


@pytest.fixture
def healthz(function, tmp_path, monkeypatch):
    """GET /healthz of a connector app in this process whose function is `function`."""
    monkeypatch.setenv("FACEID_TEST_STORE_KEY", base64.b64encode(secrets.token_bytes(32)).decode())
    monkeypatch.setenv("FACEID_TEST_DEVICE_PASSWORD", secrets.token_urlsafe(12))
    path = tmp_path / "faceid.toml"
    path.write_text(
        f'[function]\nurl = "{function.url}/"\nauth = "none"\n'
        '[store]\npath = "faceid.db"\nkey = "env:FACEID_TEST_STORE_KEY"\n'
        '[[devices]]\nserial = "A1"\nhost = "127.0.0.1:9"\nusername = "u"\n'
        'password = "env:FACEID_TEST_DEVICE_PASSWORD"\ntls = { insecure = true }\n'
    )
    rt = build_runtime(load_config(path))
    client = create_app(rt).test_client()
    yield lambda: client.get("/healthz")
    rt.close()


def test_healthz_shows_a_function_that_is_not_ready_as_failing_with_its_reason(function, healthz):
    function.reply = lambda *_: failing_answer(NO_KEY)
    answer = healthz()
    assert answer.status_code == 200  # the connector still answers every device
    report = answer.get_json()
    assert report["status"] == "degraded"
    assert report["checks"]["function"] == f"failing: {NO_KEY}"
    assert [(path, body) for path, _, body in function.seen] == [("/ready", None)]


def test_healthz_is_ok_when_the_function_is_ready(healthz):
    report = healthz().get_json()
    assert report["status"] == "ok" and report["checks"]["function"] == "ok"
