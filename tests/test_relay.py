"""The function client against a fake function over HTTP, with real google-auth ID tokens from a
fake Google token endpoint; no Google server is ever contacted."""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
from typing import Any

import pytest
from faceid_core.errors import ConfigurationError, FaceError, InputError

from connector.config import FunctionConfig
from connector.idtoken import IdTokenSource
from connector.relay import FunctionClient
from devkit.fakes.function import PROBE, REFS, FakeFunction, Reply, json_reply, match_answer
from devkit.fakes.google_token import FakeGoogleTokenServer, ServiceAccountKey
from devkit.procs import free_port
from tests.support.errors import error_of

TRACE = "0af7651916cd43dd8448eb211c80319c"


pytestmark = pytest.mark.usefixtures("no_google_metadata")


@pytest.fixture(scope="module")
def account():
    return ServiceAccountKey.generate()


@pytest.fixture(scope="module")
def google_server(account):
    with FakeGoogleTokenServer(account) as server:
        yield server


@pytest.fixture
def google(google_server):
    google_server.grants.clear()
    google_server.fail_status = None
    return google_server


@pytest.fixture
def key_file(account, google, tmp_path):
    return account.write(tmp_path / "invoker.json", google.token_uri)


@pytest.fixture
def function():
    with FakeFunction() as fake:
        yield fake


@pytest.fixture
def plain_client(function):
    """No Authorization: for the tests about answers, not tokens."""
    client = FunctionClient(FunctionConfig(url=function.url, auth="none", audience=function.url))
    yield client
    client.close()


def token_client(function, key_file, audience: str | None = None, **config: Any):
    return FunctionClient(
        FunctionConfig(
            url=function.url, audience=audience or function.url, credentials_file=key_file, **config
        )
    )


# --- what is sent, and ID tokens ---------------------------------------------------------------


def test_verify_sends_images_threshold_trace_and_an_id_token_for_the_function_url(
    function, google, key_file
):
    client = token_client(function, key_file)
    result = client.verify(PROBE, REFS, trace=TRACE, threshold=0.6)

    assert (result.verdict, result.matched_id, result.score) == ("match", "r1", 0.71)
    assert (result.faces_in_probe, result.function_ms, result.threshold) == (1, 143.2, 0.55)
    assert result.bytes_sent > 0 and result.round_trip_ms >= 0
    path, headers, body = function.seen[0]
    assert path == "/"
    assert headers["x-cloud-trace-context"] == f"{TRACE}/1;o=1"
    assert base64.b64decode(body["probe"]) == PROBE
    assert [(r["id"], base64.b64decode(r["image"])) for r in body["references"]] == REFS
    assert body["threshold"] == 0.6
    scheme, token = headers["authorization"].split(" ", 1)
    claims = google.verify(token, audience=function.url)
    assert scheme == "Bearer" and claims["email"].startswith("faceid-connector@")
    assert google.grants == [function.url]


def test_one_token_serves_many_calls_on_many_threads(function, google, key_file):
    client = token_client(function, key_file)
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def work() -> None:
        start.wait()
        try:
            for _ in range(5):
                client.verify(PROBE, REFS, trace=TRACE)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert len(function.seen) == 40
    assert len(google.grants) == 1
    assert len({headers["authorization"] for _, headers, _ in function.seen}) == 1


def test_token_is_refreshed_only_within_five_minutes_of_expiry(google, key_file):
    offset = 0.0
    source = IdTokenSource("https://fn.example", key_file, clock=lambda: time.time() + offset)
    first = source.token()
    expires = google.verify(first, "https://fn.example")["exp"]

    offset = expires - time.time() - 301  # 5 min 1 s before expiry: still cached
    assert source.token() == first and len(google.grants) == 1
    offset = expires - time.time() - 299  # inside the 5 minutes: refreshed
    source.token()
    assert len(google.grants) == 2


def test_explicit_audience_is_what_the_token_is_for(function, google, key_file):
    client = token_client(function, key_file, audience="https://verify-abc-ew.a.run.app")
    client.verify(PROBE, REFS)
    token = function.seen[0][1]["authorization"].split(" ", 1)[1]
    assert google.verify(token, "https://verify-abc-ew.a.run.app")["aud"] == (
        "https://verify-abc-ew.a.run.app"
    )


def test_application_default_credentials_come_from_the_environment(
    function, google, key_file, monkeypatch
):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", key_file)
    client = FunctionClient(FunctionConfig(url=function.url, audience=function.url))
    client.verify(PROBE, REFS)
    assert google.grants == [function.url]


def test_auth_none_sends_no_authorization(function, plain_client):
    plain_client.verify(PROBE, REFS)
    assert "authorization" not in function.seen[0][1]


def test_a_missing_or_foreign_key_file_stops_start_up(function, tmp_path):
    error = error_of(lambda: token_client(function, str(tmp_path / "absent.json")))
    assert error.code == "config_error" and "absent.json" in error.message
    (tmp_path / "user.json").write_text(json.dumps({"type": "authorized_user"}))
    error = error_of(lambda: token_client(function, str(tmp_path / "user.json")))
    assert error.code == "config_error" and "not a service-account key file" in error.message


def test_a_refused_grant_is_engine_unavailable_and_the_function_is_not_called(
    function, google, key_file
):
    google.fail_status = 400
    client = token_client(function, key_file)
    error = error_of(lambda: client.verify(PROBE, REFS))
    assert error.code == "engine_unavailable" and "ID token" in error.message
    assert function.seen == []


def test_a_failed_refresh_keeps_the_still_valid_token(google, key_file):
    offset = 0.0
    source = IdTokenSource("https://fn.example", key_file, clock=lambda: time.time() + offset)
    first = source.token()
    expires = google.verify(first, "https://fn.example")["exp"]
    google.fail_status = 400
    offset = expires - time.time() - 200
    assert source.token() == first
    assert source.token() == first  # no second attempt right away
    assert len(google.grants) == 2


def test_a_failed_grant_is_retried_after_30_s_not_by_every_call(google, key_file):
    offset = 0.0
    source = IdTokenSource("https://fn.example", key_file, clock=lambda: time.time() + offset)
    google.fail_status = 400
    for _ in range(3):
        assert error_of(source.token).code == "engine_unavailable"
    assert len(google.grants) == 1
    google.fail_status = None
    offset = 31
    assert google.verify(source.token(), "https://fn.example")
    assert len(google.grants) == 2


def test_no_credentials_at_all_is_engine_unavailable(function, monkeypatch, tmp_path):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    client = FunctionClient(FunctionConfig(url=function.url, audience=function.url))
    error = error_of(lambda: client.verify(PROBE, REFS))
    assert error.code == "engine_unavailable" and function.seen == []


# --- reading the answers ---------------------------------------------------------------------


def test_no_match_is_a_result(function, plain_client):
    function.reply = lambda *_: json_reply(
        {"verdict": "no_match", "matched_id": None, "score": 0.2, "faces_in_probe": 1}
    )
    result = plain_client.verify(PROBE, REFS)
    assert (result.verdict, result.matched_id, result.score) == ("no_match", None, 0.2)


@pytest.mark.parametrize(
    "body",
    [
        match_answer(matched="r9"),  # an id we never sent
        match_answer(matched=None),
        {"verdict": "no_match", "matched_id": "r1", "score": 0.9},
        {"verdict": "maybe", "matched_id": "r1", "score": 0.9},
        match_answer(score="0.9"),
        match_answer(score=True),
        match_answer(score=None),
        match_answer(faces_in_probe=-1),
        match_answer(elapsed_ms="fast"),
        {"matched_id": "r1", "score": 0.9},
        ["match"],
        "match",
    ],
)
def test_an_unreadable_200_is_engine_unavailable_never_a_match(function, plain_client, body):
    function.reply = lambda *_: json_reply(body)
    error = error_of(lambda: plain_client.verify(PROBE, REFS))
    assert error.code == "engine_unavailable"
    assert error.message == "The comparison service answered something unreadable"


@pytest.mark.parametrize(
    "data", [b"<html>ok</html>", b'{"verdict": "match", "score": NaN, "matched_id": "r1"}', b""]
)
def test_a_200_that_is_not_json_is_engine_unavailable(function, plain_client, data):
    function.reply = lambda *_: (200, {"Content-Type": "text/html"}, data)
    assert error_of(lambda: plain_client.verify(PROBE, REFS)).code == "engine_unavailable"


def test_an_oversized_answer_is_engine_unavailable(function, plain_client):
    function.reply = lambda *_: json_reply(match_answer(padding="x" * 2_000_000))
    assert error_of(lambda: plain_client.verify(PROBE, REFS)).code == "engine_unavailable"


def function_error(status: int, code: str, headers: dict[str, str] | None = None) -> Reply:
    return json_reply({"error": {"code": code, "message": "m"}}, status, headers)


@pytest.mark.parametrize("code", ["no_face", "face_too_small", "too_dark", "invalid_image"])
def test_face_problems_keep_their_code(function, plain_client, code):
    function.reply = lambda *_: function_error(422, code)
    error = error_of(lambda: plain_client.verify(PROBE, REFS))
    assert error.code == code
    assert isinstance(error, InputError if code == "invalid_image" else FaceError)


@pytest.mark.parametrize(
    ("reply", "code", "message_part"),
    [
        (function_error(429, "rate_limited", {"Retry-After": "7"}), "engine_busy", "rate limited"),
        (function_error(400, "bad_request"), "internal_error", "HTTP 400, bad_request"),
        (function_error(413, "too_large"), "internal_error", "HTTP 413"),
        (function_error(404, "not_found"), "internal_error", "HTTP 404"),
        (function_error(422, "several_faces"), "internal_error", "HTTP 422"),
        (
            (403, {"Content-Type": "text/html"}, b"<h1>Forbidden</h1>"),
            "engine_unavailable",
            "credentials (HTTP 403)",
        ),
        ((401, {}, b""), "engine_unavailable", "credentials (HTTP 401)"),
        (function_error(500, "config_error"), "engine_unavailable", "misconfigured"),
        (function_error(500, "internal_error"), "engine_unavailable", "failed with HTTP 500"),
        (function_error(502, "upstream_error"), "engine_unavailable", "failed with HTTP 502"),
        (function_error(502, "comparison_incomplete"), "comparison_incomplete", "it counts"),
        (function_error(504, "upstream_timeout"), "engine_unavailable", "timed out (HTTP 504)"),
        (
            (503, {"Content-Type": "text/html"}, b"Service Unavailable"),
            "engine_unavailable",
            "failed with HTTP 503",
        ),
    ],
)
def test_function_errors_map_to_connector_codes(function, plain_client, reply, code, message_part):
    function.reply = lambda *_: reply
    error = error_of(lambda: plain_client.verify(PROBE, REFS))
    assert error.code == code and message_part in error.message


FLOOR = (
    "'threshold' must be at least 0.363, the local engine's floor (a lower threshold accepts "
    "impostors)"
)


def bad_request(message: str) -> Reply:
    return json_reply({"error": {"code": "bad_request", "message": message}}, 400)


def test_a_refused_threshold_is_a_config_error_naming_the_setting_and_the_floor(
    function, plain_client
):
    """Fails closed as the connector's misconfiguration (no one's failed attempt), not a bug."""
    function.reply = lambda *_: bad_request(FLOOR)
    error = error_of(lambda: plain_client.verify(PROBE, REFS, threshold=0.1))
    assert isinstance(error, ConfigurationError) and error.code == "config_error"
    assert error.message.startswith(
        f"The comparison service refused policy.threshold = 0.1: {FLOOR}"
    )


def test_another_refusal_is_an_internal_error_in_the_functions_words(function, plain_client):
    said = "'references' must be a list of 1 to 10 items"
    function.reply = lambda *_: bad_request(said + "\x1b[2J" + "x" * 1000)
    for threshold in (None, 0.6):
        error = error_of(lambda t=threshold: plain_client.verify(PROBE, REFS, threshold=t))
        assert error.code == "internal_error"
        assert f"(HTTP 400, bad_request: {said}[2J" in error.message  # printable, bounded
        assert "\x1b" not in error.message and len(error.message) < 400
    function.reply = lambda *_: bad_request(FLOOR)  # a threshold the connector did not send
    assert error_of(lambda: plain_client.verify(PROBE, REFS)).code == "internal_error"


def test_rate_limit_carries_retry_after(function, plain_client):
    function.reply = lambda *_: function_error(429, "rate_limited", {"Retry-After": "7"})
    assert error_of(lambda: plain_client.verify(PROBE, REFS)).retry_after == 7
    function.reply = lambda *_: function_error(429, "rate_limited")
    assert error_of(lambda: plain_client.verify(PROBE, REFS)).retry_after == 10


def test_a_slow_function_times_out_once_without_retry(function):
    def slow(*_: Any) -> Reply:
        time.sleep(1.5)
        return json_reply(match_answer())

    function.reply = slow
    client = FunctionClient(
        FunctionConfig(url=function.url, auth="none", audience=function.url, timeout_s=0.5)
    )
    started = time.monotonic()
    error = error_of(lambda: client.verify(PROBE, REFS))
    assert error.code == "engine_unavailable" and "timed out" in error.message
    assert time.monotonic() - started < 1.4
    assert len(function.seen) == 1


def test_an_unreachable_function_is_engine_unavailable():
    url = f"http://127.0.0.1:{free_port()}"
    client = FunctionClient(FunctionConfig(url=url, auth="none", audience=url))
    error = error_of(lambda: client.verify(PROBE, REFS))
    assert error.code == "engine_unavailable" and "unreachable" in error.message


def test_a_kept_alive_connection_the_function_drops_is_asked_again_once_on_a_new_one():
    """The second request on a reused connection meets a close without an answer (a server's
    idle timeout racing the reuse); the client asks again on a fresh connection."""
    answer = json.dumps(match_answer()).encode()
    reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(answer),
        answer,
    )
    connections: list[int] = []  # requests read on each accepted connection

    def serve(listener: socket.socket) -> None:
        for number in range(2):
            conn, _ = listener.accept()
            connections.append(0)
            with conn, conn.makefile("rb") as stream:
                while headers := _read_headers(stream):
                    length = re.search(rb"(?i)content-length: *(\d+)", headers)
                    stream.read(int(length.group(1)) if length else 0)
                    connections[number] += 1
                    if number == 0 and connections[0] == 2:
                        break  # dropped without an answer
                    conn.sendall(reply)

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        threading.Thread(target=serve, args=(listener,), daemon=True).start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        client = FunctionClient(FunctionConfig(url=url, auth="none", audience=url))
        assert client.verify(PROBE, REFS).matched_id == "r1"
        assert client.verify(PROBE, REFS).matched_id == "r1"
    assert connections == [2, 1]


def _read_headers(stream: Any) -> bytes:
    """One request's head, or b"" once the client has closed the connection."""
    headers = b""
    while not headers.endswith(b"\r\n\r\n"):
        line = stream.readline()
        if not line:
            return b""
        headers += line
    return headers


def test_too_many_references_are_refused_before_sending(function, plain_client):
    refs = [(f"r{i}", b"x") for i in range(11)]
    assert error_of(lambda: plain_client.verify(PROBE, refs)).code == "internal_error"
    assert function.seen == []


def test_inspect_returns_boxes_and_their_detection_scores(function, plain_client):
    function.reply = lambda *_: json_reply(
        {"faces": [{"box": [10, 20, 110, 130], "quality": 0.9}, {"box": [300, 40, 90, 95]}]}
    )
    assert plain_client.inspect(PROBE, trace=TRACE) == [
        ((10, 20, 110, 130), 0.9),
        ((300, 40, 90, 95), None),
    ]
    path, _, body = function.seen[0]
    assert path == "/inspect" and base64.b64decode(body["image"]) == PROBE


@pytest.mark.parametrize(
    "body",
    [{"faces": [{"box": [1, 2, 3]}]}, {"faces": [{"box": [1, 2, 0, 4]}]}, {"faces": "none"}, {}],
)
def test_an_unreadable_inspect_answer_is_engine_unavailable(function, plain_client, body):
    function.reply = lambda *_: json_reply(body)
    assert error_of(lambda: plain_client.inspect(PROBE)).code == "engine_unavailable"
