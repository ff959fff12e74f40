"""Fault injection, end to end: whatever fails between the macro and a match (the device, the
comparison function, MXFace, Secret Manager, the connector's own store), the macro's answer is a
signed non-match with a specific code and a clear message, and GET /v1/status says the device is
not unlocked. Each test then shows that the same device unlocks once the fault is gone: only the
fault kept it locked.

One stack (devkit.stack.start_stack) serves the module: the connector process; a device simulator
process (the camera, switched per test) and an in-process simulator whose account the connector
has the wrong password for; the real function with FACE_ENGINE=mxface, its key read from a fake
Secret Manager (MXFACE_KEY_SECRET), comparing through a fake MXFace that matches every face it
sees; and, where the connector's configuration points at the function, a front that relays to the
real function unless a test makes it slow, wrong or absent.

The same faults closer to the code: tests/test_device_client.py, tests/test_relay.py,
tests/test_function_integration.py, tests/test_function_secrets.py, tests/test_simulator.py.
"""

from __future__ import annotations

import io
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
import requests
from faceid_core.errors import FaceIdError
from faceid_core.secrets import FAILED_READ_KEPT_S
from PIL import Image

from connector.app import create_app
from connector.config import DeviceDefaults, load_config
from connector.device import SIGNIN_PATH, SIGNOUT_PATH
from connector.runtime import SIGNOUT_BUDGET_S, build_runtime
from devkit.connector_e2e import (
    assert_error,
    enroll,
    extra_device,
    open_sessions,
    open_store,
    signed_answer,
    status,
    verify,
)
from devkit.fakes.function import json_reply, match_answer
from devkit.fakes.mxface import (
    FakeMXFace,
    Reply,
    match,
    no_face_200,
    rate_limited,
    server_error,
    unauthorized,
)
from devkit.fakes.secret_manager import FakeSecretManager
from devkit.macro_client import authorization, body_bytes
from devkit.photos import write_frames
from devkit.samples import b64, grace_hopper_jpeg
from devkit.simulator import DeviceSimulator
from devkit.stack import SIM_ACCOUNT, SimDevice, Stack, start_stack

pytestmark = pytest.mark.slow

GRACE = "Grace Hopper"
DEVICE_BUDGET_S = DeviceDefaults().budget_s  # the stack's configuration leaves the default
UPSTREAM_TIMEOUT_S = 1.0  # the function's deadline
FUNCTION_TIMEOUT_S = 2.0  # the connector's function.timeout_s: longer, so the function's own
# errors (Secret Manager, MXFace) reach the connector before it stops waiting
SECRET = "projects/test-project/secrets/mxface-key"
ABSENT = object()  # a field left out of an answer

Answer = tuple[int, dict[str, str], bytes]
FrontReply = Callable[[str, dict[str, str], Any], Answer]


# --- what every fault must end in ------------------------------------------------------------


def assert_stays_locked(connector: Any, device: SimDevice, code: str, says: str) -> dict[str, Any]:
    """The macro's answer (checked as the macro checks it) is an error with `code` and a message
    saying `says`, and the connector does not count the device as unlocked."""
    answer = verify(connector, device)
    assert_error(answer, code)
    assert says in answer["message"], answer
    assert status(connector, device)["unlocked"] is False
    return answer


def lock(connector: Any, device: SimDevice) -> None:
    answer = connector.call("/v1/lock", device, {"serial": device.serial})
    assert (answer.status_code, answer.json()) == (200, {"unlocked": False})


def assert_unlocks(connector: Any, device: SimDevice) -> None:
    """Without the fault the same device matches and counts as unlocked; locked again after."""
    answer = verify(connector, device)
    assert (answer["verdict"], answer["person"]) == ("match", GRACE), answer
    assert status(connector, device)["unlocked"] is True
    lock(connector, device)


class Output:
    """What a process printed from now on."""

    def __init__(self, read: Callable[[], str]) -> None:
        self._read, self._start = read, len(read())

    def new(self) -> str:
        return self._read()[self._start :]


# --- the pieces around the stack -------------------------------------------------------------


class FunctionFront:
    """What the connector's configuration calls the comparison function: relays each call to the
    real function unless a test sets another `reply`. It closes every connection after its answer
    (HTTP/1.0), so once stopped nothing answers at its address; start() listens there again."""

    def __init__(self) -> None:
        self.reply: FrontReply = lambda *_: (503, {}, b"")
        self.relay = self.reply
        self.calls = 0
        self.port = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def route(self, function_url: str) -> str:
        """For start_stack(route_function=...): relay to `function_url`, give the front's URL."""
        self.reply = self.relay = relay_to(function_url)
        return self.start().url

    def start(self) -> FunctionFront:
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                front.calls += 1
                headers = {k.lower(): v for k, v in self.headers.items()}
                status_code, reply_headers, data = front.reply(self.path, headers, json.loads(raw))
                try:
                    self.send_response(status_code)
                    for name, value in reply_headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the connector stopped waiting

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def relay_to(function_url: str) -> FrontReply:
    """Pass the call on to the real function and give back its status, type and Retry-After."""

    def reply(path: str, headers: dict[str, str], body: Any) -> Answer:
        trace = {k: v for k, v in headers.items() if k == "x-cloud-trace-context"}
        answer = requests.post(function_url + path, json=body, headers=trace, timeout=30)
        kept = {k: v for k, v in answer.headers.items() if k in ("Content-Type", "Retry-After")}
        return answer.status_code, kept, answer.content

    return reply


class SecretManager(FakeSecretManager):
    """The fake Secret Manager with an outage switch: while `unavailable`, every call gets gRPC
    UNAVAILABLE, what the service answers when it cannot serve (the client retries it)."""

    unavailable = False
    refused = 0  # calls answered UNAVAILABLE

    def _access(self, request: Any, context: grpc.ServicerContext) -> Any:
        if self.unavailable:
            self.refused += 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "The service is currently unavailable.")
        return super()._access(request, context)

    def calls(self) -> int:
        return self.access_count() + self.refused


def black(jpeg: bytes) -> bool:
    with Image.open(io.BytesIO(jpeg)) as image:
        return image.convert("L").getextrema()[1] < 16


def mxface_sees(reference: bytes, probe: bytes) -> Reply:
    """MXFace as this module's fake plays it: the enrolled face is in every picture but a black
    one, where it finds no face (REFERENCE §3: an HTTP 200 carrying code 400)."""
    return no_face_200() if black(probe) else match()


@dataclass
class World:
    stack: Stack
    camera: SimDevice  # the simulator process
    bad_password: SimDevice  # an in-process simulator; the connector has a wrong password for it
    front: FunctionFront
    mx: FakeMXFace
    sm: SecretManager

    @property
    def password(self) -> str:
        """The device account's password, as the connector has it."""
        return self.stack.connector.env["FACEID_DEVICE_PASSWORD"]

    def repair(self) -> None:
        self.front.reply = self.front.relay
        self.mx.reset()
        self.mx.verify_rule = mxface_sees
        self.sm.unavailable = False
        self.sm.deny(SECRET, False)
        self.camera.control(down=False, slow_s=0, no_option_key=False, black=False, fault=None)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    frames = write_frames(tmp_path_factory.mktemp("frames"))
    front = FunctionFront()
    guarded = DeviceSimulator(
        {SIM_ACCOUNT: secrets.token_urlsafe(18)}, frames["grace_hopper"]
    ).start()
    wrong = extra_device("XBADPASSWORD", sim=guarded, password_ref="env:WRONG_PASSWORD")
    stack = None
    with FakeMXFace() as mx, SecretManager() as sm:
        sm.add_version(SECRET, mx.key)
        try:
            stack = start_stack(
                tmp_path_factory.mktemp("stack"),
                images=frames["grace_hopper"],
                function_env={
                    "FACE_ENGINE": "mxface",
                    "MXFACE_API_URL": mx.verify_url,
                    "MXFACE_KEY": None,
                    "MXFACE_KEY_SECRET": f"{SECRET}/versions/latest",
                    "SECRET_MANAGER_EMULATOR_HOST": sm.address,
                    "GOOGLE_CLOUD_PROJECT": "test-project",
                    "UPSTREAM_TIMEOUT_S": str(UPSTREAM_TIMEOUT_S),
                },
                function_timeout_s=FUNCTION_TIMEOUT_S,
                extra_toml="\n" + wrong.toml,
                connector_env={"WRONG_PASSWORD": secrets.token_urlsafe(18)},
                route_function=front.route,
                extra_keys={wrong.device.serial: wrong.device.key},
            )
            # A cold function spends its first request importing the Secret Manager client,
            # longer than its deadline: one call of its own warms it.
            requests.post(
                stack.function_url + "/inspect",
                json={"image": b64(grace_hopper_jpeg())},
                timeout=30,
            )
            world = World(stack, stack.devices[0], wrong.device, front, mx, sm)
            world.repair()
            assert enroll(stack, world.camera, GRACE)["result"] == "enrolled"
            # The device the connector cannot sign in to gets its reference straight in the
            # store, so a verify goes as far as the device.
            store = open_store(stack)
            try:
                store.add_reference(wrong.device.serial, GRACE, grace_hopper_jpeg())
            finally:
                store.close()
            yield world
        finally:
            if stack is not None:
                stack.stop()
            guarded.close()
            front.stop()


@pytest.fixture
def camera(world) -> Iterator[SimDevice]:
    """The camera, locked. Afterwards every fault is repaired, the camera unlocks, and no device
    web session is left open."""
    world.repair()
    lock(world.stack, world.camera)
    yield world.camera
    world.repair()
    assert_unlocks(world.stack, world.camera)
    assert open_sessions([world.camera]) == {}


# --- the device ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("switches", "code", "says", "logged"),
    [
        pytest.param(
            {"down": True},
            "device_unreachable",
            "cannot reach this device's camera",
            "Could not reach the device's web interface",
            id="device_down",
        ),
        pytest.param(
            {"slow_s": DEVICE_BUDGET_S + 2, "slow_on": ["snapshot"]},
            "device_unreachable",
            "cannot reach this device's camera",
            "did not answer the snapshot in time",
            id="device_slow_past_the_deadline",
        ),
        pytest.param(
            {"no_option_key": True},
            "snapshot_unavailable",
            "No camera picture",
            "refused the snapshot (HTTP 403)",
            id="no_remote_monitoring_option_key",
        ),
        pytest.param(
            {"black": True},
            "no_face",
            "No face found",
            None,  # the person's to solve, not the operator's: not logged
            id="lid_closed_black_frame",
        ),
    ],
)
def test_a_device_fault_keeps_the_device_locked(world, camera, switches, code, says, logged):
    camera.control(**switches)
    connector_log = Output(world.stack.connector.stdout)
    started = time.monotonic()
    assert_stays_locked(world.stack, camera, code, says)
    # The device's budget, then the sign-out's: well inside the macro's 20 s.
    assert time.monotonic() - started < DEVICE_BUDGET_S + SIGNOUT_BUDGET_S + 3
    if logged:
        assert logged in connector_log.new()


def test_a_device_at_its_web_session_limit_keeps_the_device_locked(world, camera):
    """Other clients hold every web session the account may open (REFERENCE §1: 20 per user)."""
    held = []
    try:
        for _ in range(31):
            answer = requests.post(
                camera.url + SIGNIN_PATH,
                data={"username": SIM_ACCOUNT, "password": world.password},
                verify=camera.ca_path,
                timeout=5,
            )
            if answer.status_code != 200:
                break
            held.append(answer.cookies)
        assert answer.status_code == 503 and held, "the device never refused a session"
        before = camera.stats()
        connector_log = Output(world.stack.connector.stdout)
        assert_stays_locked(world.stack, camera, "device_unreachable", "cannot reach")
        after = camera.stats()
        assert after["signin_attempts"] - before["signin_attempts"] == 1
        assert after["session_limit_refusals"] - before["session_limit_refusals"] == 1
        assert "too many open web sessions" in connector_log.new()
    finally:
        for cookies in held:
            requests.get(
                camera.url + SIGNOUT_PATH, cookies=cookies, verify=camera.ca_path, timeout=5
            )


def test_a_wrong_device_password_signs_in_exactly_once_and_stays_locked(world):
    device = world.bad_password
    lock(world.stack, device)
    for _ in range(2):  # never retried, so the device never locks the account because of us
        before = device.simulator.stats()
        assert_stays_locked(world.stack, device, "device_auth_failed", "could not sign in")
        after = device.simulator.stats()
        assert after["signin_attempts"] - before["signin_attempts"] == 1
        assert after["failed_logins"] - before["failed_logins"] == 1
        assert after["snapshots_served"] == before["snapshots_served"]
        assert after["locked_accounts"] == 0


# --- the comparison function -----------------------------------------------------------------


def sent_id(body: Any) -> str:
    return str(body["references"][0]["id"])


def answers(status_code: int, body: Any) -> FrontReply:
    """The function answers this, whatever it was asked."""
    if isinstance(body, bytes):
        return lambda *_: (status_code, {"Content-Type": "text/html"}, body)
    return lambda *_: json_reply(body, status_code)


def match_with(**changes: Any) -> FrontReply:
    """A 200 saying match for a reference the connector sent, with one field made wrong."""

    def reply(path: str, headers: dict[str, str], body: Any) -> Answer:
        answer = {**match_answer(sent_id(body)), **changes}
        return json_reply({k: v for k, v in answer.items() if v is not ABSENT})

    return reply


def late_match(path: str, headers: dict[str, str], body: Any) -> Answer:
    """A match that comes after the connector stopped waiting."""
    time.sleep(FUNCTION_TIMEOUT_S + 1)
    return json_reply(match_answer(sent_id(body)))


@pytest.mark.parametrize(
    ("reply", "logged"),
    [
        pytest.param(late_match, "timed out", id="slow_past_function_timeout"),
        pytest.param(
            answers(500, {"error": {"code": "internal_error", "message": "failed"}}),
            "failed with HTTP 500",
            id="http_500",
        ),
        pytest.param(answers(200, b"<html>Service Unavailable</html>"), "unreadable", id="html"),
        pytest.param(answers(200, b""), "unreadable", id="empty_200"),
        pytest.param(answers(200, [{"verdict": "match"}]), "unreadable", id="json_array"),
        pytest.param(answers(200, {"result": "ok"}), "unreadable", id="wrong_json_object"),
        pytest.param(match_with(matched_id="r99"), "unreadable", id="match_for_an_id_never_sent"),
        pytest.param(match_with(matched_id=ABSENT), "unreadable", id="match_without_matched_id"),
        pytest.param(match_with(score="0.9"), "unreadable", id="match_with_a_string_score"),
        pytest.param(match_with(score=float("nan")), "unreadable", id="match_with_a_nan_score"),
        pytest.param(match_with(verdict="MATCH"), "unreadable", id="match_spelled_otherwise"),
    ],
)
def test_a_function_fault_keeps_the_device_locked(world, camera, reply, logged):
    world.front.reply = reply
    calls = world.front.calls
    connector_log = Output(world.stack.connector.stdout)
    assert_stays_locked(world.stack, camera, "engine_unavailable", "Face comparison is unavailable")
    assert world.front.calls == calls + 1  # a verify that reached the function is not retried
    assert logged in connector_log.new()


def test_a_function_that_is_down_keeps_the_device_locked(world, camera):
    """Nothing answers at the function's address (the connection is refused), then it is back."""
    world.front.stop()
    try:
        connector_log = Output(world.stack.connector.stdout)
        assert_stays_locked(world.stack, camera, "engine_unavailable", "unavailable")
        assert "unreachable" in connector_log.new()
    finally:
        world.front.start()


# --- MXFace and Secret Manager, behind the real function -------------------------------------


@pytest.mark.parametrize(
    ("reply", "code", "says", "logged"),
    [
        pytest.param(
            rate_limited(), "engine_busy", "Try again in 5 seconds", "rate limit", id="429"
        ),
        pytest.param(server_error(), "engine_unavailable", "unavailable", "HTTP 500", id="500"),
        pytest.param(Reply(503, None), "engine_unavailable", "unavailable", "HTTP 503", id="503"),
    ],
)
def test_an_mxface_failure_keeps_the_device_locked(world, camera, reply, code, says, logged):
    world.mx.verify_rule = lambda *_: reply  # every attempt the function makes fails
    function_log = Output(world.stack.function.stdout)
    assert_stays_locked(world.stack, camera, code, says)
    assert world.mx.count() >= 1
    assert logged in function_log.new()


@pytest.mark.parametrize(
    ("break_it", "logged"),
    [
        pytest.param(
            lambda sm: sm.deny(SECRET),
            "permission denied reading MXFACE_KEY_SECRET",
            id="permission_denied",
        ),
        pytest.param(
            lambda sm: setattr(sm, "unavailable", True),
            "Secret Manager unreachable reading MXFACE_KEY_SECRET",
            id="unavailable",
        ),
    ],
)
def test_a_secret_manager_failure_keeps_the_device_locked(world, camera, break_it, logged):
    # MXFace refuses the key once (as after a rotation): the function must read the secret again.
    world.mx.enqueue(unauthorized())
    assert_stays_locked(world.stack, camera, "engine_unavailable", "unavailable")
    break_it(world.sm)
    calls, comparisons = world.sm.calls(), world.mx.count()
    function_log = Output(world.stack.function.stdout)
    assert_stays_locked(world.stack, camera, "engine_unavailable", "unavailable")
    assert world.sm.calls() > calls
    assert world.mx.count() == comparisons  # no key, no comparison
    assert logged in function_log.new()
    time.sleep(FAILED_READ_KEPT_S + 0.5)  # the function answers its failed read again meanwhile


# --- the connector's store, in a connector built in this process ------------------------------


class _Answer:
    """What devkit.connector_e2e reads of a requests.Response, from a Flask test response."""

    def __init__(self, response: Any, request_headers: dict[str, str]) -> None:
        self.status_code = response.status_code
        self.headers = response.headers
        self.request = SimpleNamespace(headers=request_headers)
        self.content = response.get_data()
        self.text = response.get_data(as_text=True)
        self._json = response.get_json(silent=True)

    def json(self) -> Any:
        return self._json


class InProcessConnector:
    """The connector's app from its real factory (create_app on build_runtime, with the stack's
    configuration but a store of its own), called through Flask's test client in this thread,
    so each request uses this thread's store connection: the one a fault is set on."""

    def __init__(self, config_path: Path, device: SimDevice) -> None:
        self.runtime = build_runtime(load_config(config_path), serials={device.serial})
        self.runtime.store.set_device_key(device.serial, device.key)
        self.client = create_app(self.runtime).test_client()
        self.db = self.runtime.store._db._conn()  # SqliteDatabase: this thread's connection

    def call(self, path: str, device: SimDevice, body: Any = None) -> _Answer:
        data = body_bytes(body)
        method = "GET" if body is None else "POST"
        headers = {"Authorization": authorization(device.key, method, path, device.serial, data)}
        response = self.client.open(path, method=method, data=data, headers=headers)
        return _Answer(response, headers)


def disk_full(connector: InProcessConnector) -> Callable[[], None]:
    """The store cannot grow (its page limit pinned at its size, as a full disk would), and
    other devices' lockout rows take the room left on its pages until SQLite refuses a write."""
    pages = connector.db.execute("PRAGMA page_count").fetchone()[0]
    default = connector.db.execute("PRAGMA max_page_count").fetchone()[0]
    connector.db.execute(f"PRAGMA max_page_count = {pages}")
    for i in range(10_000):
        try:
            connector.runtime.store.begin_attempt(
                f"F{i}", lambda state: state, lease_s=0, max_wait_s=0
            )
        except FaceIdError as exc:
            assert exc.code == "store_unavailable" and "full" in exc.message
            break
    else:
        raise AssertionError("the store never filled up")
    return lambda: connector.db.execute(f"PRAGMA max_page_count = {default}")


def read_only(connector: InProcessConnector) -> Callable[[], None]:
    connector.db.execute("PRAGMA query_only = ON")
    return lambda: connector.db.execute("PRAGMA query_only = OFF")


@pytest.fixture
def in_process(world, monkeypatch) -> Iterator[InProcessConnector]:
    world.repair()
    config = world.stack.workdir / f"in-process-{uuid.uuid4().hex[:8]}.toml"
    text = world.stack.config_path.read_text()
    assert 'path = "faceid.db"' in text
    config.write_text(text.replace('path = "faceid.db"', f'path = "{config.stem}.db"'))
    monkeypatch.setenv("FACEID_DEVICE_PASSWORD", world.password)
    connector = InProcessConnector(config, world.camera)
    try:
        assert enroll(connector, world.camera, GRACE)["result"] == "enrolled"
        yield connector
    finally:
        connector.runtime.close()


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        pytest.param(disk_full, "database or disk is full", id="disk_full"),
        pytest.param(read_only, "attempt to write a readonly database", id="read_only"),
    ],
)
def test_a_store_that_refuses_writes_keeps_a_matching_face_locked_and_says_so(
    world, in_process, capsys, fault, error
):
    """In this process, not the stack's: SQLite's page limit and read-only switch belong to a
    connection, so only code inside the connector can set them, and making a running process's
    open database full or read-only from outside takes a filesystem of its own (mount
    privileges); running as root, chmod does not stop writes. The app, runtime, store and
    request path are the connector's own; the device and the function are the stack's."""
    undo = fault(in_process)
    capsys.readouterr()
    try:
        # Refused when the store cannot spend the request's nonce (a signed 503, on which the
        # macro moves to its next connector), or a signed error verdict when it cannot record
        # the attempt: never a match, and the store never counts the device as unlocked.
        answer = in_process.call("/v1/verify", world.camera, {"serial": world.camera.serial})
        body = signed_answer(world.camera, answer)
        if answer.status_code == 200:
            assert_error(body, "store_unavailable")
            assert "cannot record logins" in body["message"], body
        else:
            assert (answer.status_code, body["error"]["code"]) == (503, "store_unavailable")
        runtime = in_process.runtime
        ttl = runtime.config.policy.unlock_ttl_s
        assert not runtime.store.is_unlocked(world.camera.serial, ttl)
        assert error in capsys.readouterr().out + body.get("error", {}).get("message", "")
        if fault is read_only:  # a lock with no session to end writes nothing a full disk refuses
            locked = in_process.call("/v1/lock", world.camera, {"serial": world.camera.serial})
            assert locked.status_code == 503
            assert locked.json()["error"]["code"] == "store_unavailable"
    finally:
        undo()
    assert_unlocks(in_process, world.camera)
    assert open_sessions([world.camera]) == {}
