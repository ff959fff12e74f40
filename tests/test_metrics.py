"""What administrators see of the running connector: Prometheus counters and latency histograms
on GET /metrics after a scripted sequence of logins, /healthz (store, function reachability
checked at most every 30 s, last match per device), and JSON log lines that join the connector's
and the function's records of one request by its trace, with no secret in any of them."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from connector.app import create_app
from connector.config import load_config
from connector.health import CachedCheck
from connector.metrics import STAGE_BUCKETS_S
from connector.runtime import build_runtime
from devkit.connector_e2e import (
    TwoDevices,
    enroll,
    two_devices_with_webex,
)
from devkit.macro_client import key_text
from devkit.procs import free_port
from devkit.stack import SimDevice

GRACE = "Grace Hopper"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# --- in-process: health without a function, cache ---------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_function_check_runs_at_most_once_per_30_s():
    clock = Clock()
    answers = iter([None, "down"])
    check = CachedCheck(lambda: next(answers), clock=clock)
    assert check.result() == (None, 0.0)
    clock.now += 29
    assert [check.result() for _ in range(50)][-1] == (None, 29.0)
    assert check.runs == 1
    clock.now += 1
    assert check.result() == ("down", 0.0) and check.runs == 2


def test_a_failing_check_is_reported_not_raised():
    def broken() -> str | None:
        raise OSError("boom")

    assert CachedCheck(broken).result()[0] == "check failed (OSError)"


@pytest.fixture
def lone_app(tmp_path, monkeypatch):
    """The connector app in this process, its function URL a closed port."""
    monkeypatch.setenv("FACEID_TEST_STORE_KEY", base64.b64encode(secrets.token_bytes(32)).decode())
    monkeypatch.setenv("FACEID_TEST_DEVICE_PASSWORD", secrets.token_urlsafe(12))
    path = tmp_path / "faceid.toml"
    path.write_text(
        f'[function]\nurl = "http://127.0.0.1:{free_port()}/"\nauth = "none"\n'
        '[store]\npath = "faceid.db"\nkey = "env:FACEID_TEST_STORE_KEY"\n'
        '[[devices]]\nserial = "A1"\nhost = "127.0.0.1:9"\nusername = "u"\n'
        'password = "env:FACEID_TEST_DEVICE_PASSWORD"\ntls = { insecure = true }\n'
    )
    rt = build_runtime(load_config(path))
    yield rt, create_app(rt).test_client()
    rt.close()


def test_health_is_200_degraded_when_the_function_is_down_and_503_when_the_store_fails(lone_app):
    rt, client = lone_app
    answer = client.get("/healthz")
    assert answer.status_code == 200
    report = answer.get_json()
    assert report["status"] == "degraded"
    assert report["checks"]["store"] == "ok"
    assert "unreachable" in report["checks"]["function"]
    assert report["devices"] == {"A1": {"last_match_s_ago": None}}
    rt.store.close()
    answer = client.get("/healthz")
    assert answer.status_code == 503
    assert answer.get_json()["status"] == "failing"
    assert answer.get_json()["checks"]["store"] == "failed: the store is closed"


def test_each_app_has_its_own_registry(lone_app, tmp_path):
    rt, client = lone_app
    rt.metrics.enrollment("refused", "locked")
    other = build_runtime(rt.config)
    try:
        first = parse(client.get("/metrics").get_data(as_text=True))
        second = parse(create_app(other).test_client().get("/metrics").get_data(as_text=True))
    finally:
        other.close()
    name = "faceid_enrollments_total"
    assert value(first, name, outcome="refused", code="locked") == 1
    assert value(second, name, outcome="refused", code="locked") == 0


# --- the running stack --------------------------------------------------------------------


@dataclass
class World(TwoDevices):
    def get(self, path: str) -> requests.Response:
        url = self.stack.connector_url + path
        return requests.get(url, verify=str(self.stack.ca_path), timeout=10)

    def scrape(self) -> Samples:
        answer = self.get("/metrics")
        assert answer.status_code == 200
        assert answer.headers["Content-Type"].startswith("text/plain; version=")
        return parse(answer.text)

    def verify(self, device: SimDevice) -> tuple[dict, str]:
        body = {"serial": device.serial}
        answer = self.stack.call("/v1/verify", device, body)
        assert answer.status_code == 200, answer.text
        return answer.json(), answer.headers["X-Request-Id"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    with two_devices_with_webex(tmp_path_factory, webex_toml=('room_id = "ROOM"',)) as two:
        yield World(**vars(two))


@pytest.mark.slow
def test_metrics_count_a_scripted_sequence_of_logins(world):
    before = world.scrape()
    room, board = world.room, world.board
    assert enroll(world.stack, room, GRACE)["result"] == "enrolled"
    assert enroll(world.stack, board, GRACE)["result"] == "enrolled"
    assert [world.verify(room)[0]["verdict"] for _ in range(2)] == ["match", "match"]
    room.control(images=str(world.frames["no_face"]))
    assert world.verify(room)[0]["code"] == "no_face"
    board.control(images=str(world.frames["astronaut"]))
    answers = [world.verify(board)[0] for _ in range(5)]
    assert [a["code"] for a in answers] == ["not_recognized"] * 5
    assert answers[-1]["retry_after_s"] == 30  # the fifth failure starts the lockout
    assert world.verify(board)[0]["code"] == "locked_out"
    world.webex.wait_for(7)  # events = "failures": no_face, 5 no_match, locked_out
    sent = "faceid_webex_messages_total"
    deadline = time.monotonic() + 5
    while True:  # the fake records a message just before the connector reads its answer
        after = world.scrape()
        if value(after, sent, outcome="sent") - value(before, sent, outcome="sent") >= 7:
            break
        assert time.monotonic() < deadline, "the sent messages were not counted"
        time.sleep(0.05)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    verifications = "faceid_verifications_total"
    assert grew(verifications, outcome="match", code="none") == 2
    assert grew(verifications, outcome="no_match", code="not_recognized") == 5
    assert grew(verifications, outcome="error", code="no_face") == 1
    assert grew(verifications, outcome="error", code="locked_out") == 1
    assert grew("faceid_enrollments_total", outcome="enrolled", code="none") == 2
    assert grew("faceid_lockouts_total") == 1
    stage = "faceid_verify_stage_seconds_count"
    assert grew(stage, stage="total") == 9
    assert grew(stage, stage="signin") == grew(stage, stage="snapshot") == 8  # not locked_out
    assert grew(stage, stage="function") == 8  # a refusal (no_face) is timed too
    assert grew("faceid_webex_messages_total", outcome="sent") == 7
    assert grew("faceid_webex_messages_total", outcome="dropped") == 0
    assert value(after, "faceid_device_sessions_open") == 0
    buckets = {
        dict(labels)["le"]
        for name, labels in after
        if name == "faceid_verify_stage_seconds_bucket" and dict(labels)["stage"] == "total"
    }
    assert buckets == {str(b) for b in STAGE_BUCKETS_S} | {"+Inf"}
    total_s = value(after, "faceid_verify_stage_seconds_sum", stage="total")
    assert 0 < total_s < 9 * 20


@pytest.mark.slow
def test_metrics_need_no_signature_and_name_no_device_or_person(world):
    text = world.get("/metrics").text
    assert "faceid_verifications_total" in text
    for private in (world.room.serial, world.board.serial, "Grace", key_text(world.room.key)):
        assert private not in text


@pytest.mark.slow
def test_health_reports_store_function_and_last_match_without_hammering_the_function(world):
    world.room.control(images=str(world.frames["grace_hopper"]))
    assert world.verify(world.room)[0]["verdict"] == "match"
    function_log = world.stack.function.stdout
    probes_before = function_log().count('"action":"ready"')
    assert probes_before >= 1  # the check reaches the function (first /healthz at start-up)
    answers = [world.get("/healthz") for _ in range(20)]
    assert {a.status_code for a in answers} == {200}
    report = answers[-1].json()
    assert report["status"] == "ok"
    assert report["checks"]["store"] == "ok" and report["checks"]["function"] == "ok"
    assert 0 <= report["checks"]["function_checked_s_ago"] < 30
    assert 0 <= report["devices"][world.room.serial]["last_match_s_ago"] < 30
    assert report["devices"][world.board.serial] == {"last_match_s_ago": None}
    assert function_log().count('"action":"ready"') - probes_before <= 1
    records = [json.loads(line) for line in function_log().splitlines() if line]
    probes = [r for r in records if r.get("action") == "ready"]
    assert {r["severity"] for r in probes} == {"DEBUG"}  # GET /ready: no warning in the log


@pytest.mark.slow
def test_log_lines_join_connector_and_function_by_trace_and_hold_no_secret(world):
    world.room.control(images=str(world.frames["grace_hopper"]))
    answer, trace = world.verify(world.room)
    assert answer["verdict"] == "match"
    stack = world.stack
    connector = [json.loads(line) for line in stack.connector.stdout().splitlines()]
    function = [json.loads(line) for line in stack.function.stdout().splitlines() if line]
    mine = [r for r in connector if r.get("trace") == trace]
    theirs = [r for r in function if r.get("trace") == trace]
    assert [r["message"] for r in mine] == ["verify match"]
    assert mine[0]["serial"] == world.room.serial and mine[0]["stages_ms"]["function"] > 0
    assert [r["message"] for r in theirs] == ["verify done"]
    assert theirs[0]["verdict"] == "match"

    store_key = (stack.workdir / "store.key").read_bytes().decode().strip()
    secret_values = [
        key_text(world.room.key),
        world.room.key.hex(),
        key_text(world.board.key),
        stack.connector.env["FACEID_DEVICE_PASSWORD"],
        world.board_password,
        store_key,
        base64.b64decode(store_key).hex(),
        world.webex.token,
    ]
    outputs = [
        stack.connector.stdout(),
        stack.connector.stderr(),
        stack.function.stdout(),
        stack.function.stderr(),
    ]
    for secret in secret_values:
        assert not any(secret in output for output in outputs)
    # every log line is JSON on stdout, gunicorn's too (connector/server.py); none on stderr
    assert not any(line.startswith("{") for line in stack.connector.stderr().splitlines())
