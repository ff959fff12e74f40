"""The macro API's wiring in memory (connector/app.py on the ports of connector/memory.py): Flask's
test client, no socket. What each route does beside the rule it calls: the answer signed for the
request's nonce, the audit record, the notice for the administrators, the clock the signature is
checked against, status and lock. tests/test_connector_api.py runs the same requests over HTTPS
through the real connector and function processes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from faceid_core.errors import DeviceError
from flask.testing import FlaskClient

from connector.app import create_app
from connector.memory import MATCH, NO_MATCH
from connector.protocol import ANSWER_TTL_S, SIGNATURE_HEADER
from connector.runtime import NOTIFY_DRAIN_S
from devkit.macro_client import answer_signature, authorization, body_bytes, new_nonce
from tests.support.memory_runtime import Rig

GRACE = "Grace Hopper"


@pytest.fixture
def client(rig) -> FlaskClient:
    return create_app(rig.rt).test_client()


def call(
    rig: Rig,
    client: FlaskClient,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    skew_s: int = 0,
) -> tuple[int, dict[str, Any]]:
    """One request as the macro signs it at the rig's time; the answer must be signed for it."""
    serial = rig.serial
    data = body_bytes(body)
    method = "GET" if body is None else "POST"
    nonce = new_nonce()
    header = authorization(
        rig.keys[serial], method, path, serial, data, ts=int(rig.clock()) + skew_s, nonce=nonce
    )
    answer = client.open(
        path,
        method=method,
        data=data,
        headers={"Authorization": header, "Content-Type": "application/json"},
    )
    expected = answer_signature(rig.keys[serial], nonce, answer.data)
    assert answer.headers[SIGNATURE_HEADER] == expected, answer.data
    assert answer.data.isascii()
    return answer.status_code, json.loads(answer.data)


def verify(rig: Rig, client: FlaskClient) -> dict[str, Any]:
    status, answer = call(rig, client, "/v1/verify", {"serial": rig.serial})
    assert status == 200, answer
    return answer


def test_a_match_is_answered_for_the_device_audited_and_told(rig, client):
    rig.admin_adds(GRACE)
    rig.function.script(MATCH)
    answer = verify(rig, client)
    assert answer == {
        "verdict": "match",
        "code": None,
        "person": GRACE,
        "message": f"Welcome, {GRACE}",
        "retry_after_s": None,
        "serial": rig.serial,
        "nonce": answer["nonce"],
        "expires_at": int(rig.clock()) + ANSWER_TTL_S,
    }
    (entry,) = [e for e in rig.store.audit(serial=rig.serial) if e.action == "verify"]
    assert (entry.outcome, entry.person, entry.score) == ("match", GRACE, MATCH.score)
    (event,) = rig.notices.events
    assert (event.kind, event.outcome, event.person, event.serial) == (
        "verify",
        "match",
        GRACE,
        rig.serial,
    )
    assert event.device_name == rig.device.name


def test_every_failure_is_told_with_its_picture_and_the_lockout_it_started(rig, client):
    rig.admin_adds(GRACE)
    answers = [verify(rig, client) for _ in range(5)]
    assert [a["code"] for a in answers] == ["not_recognized"] * 5
    assert answers[-1]["retry_after_s"] == 30
    events = rig.notices.events
    assert [(e.outcome, e.code, e.lockout_s) for e in events] == [
        ("no_match", "not_recognized", None)
    ] * 4 + [("no_match", "not_recognized", 30)]
    assert all(e.snapshot is not None and e.snapshot[:2] == b"\xff\xd8" for e in events)
    locked = verify(rig, client)
    assert (locked["verdict"], locked["code"], locked["retry_after_s"]) == (
        "error",
        "locked_out",
        30,
    )
    assert rig.notices.events[-1].code == "locked_out" and rig.notices.events[-1].snapshot is None


def test_a_device_failure_is_told_and_audited_with_its_code(rig, client):
    rig.admin_adds(GRACE)
    rig.camera.error = DeviceError("device_auth_failed", "refused")
    assert verify(rig, client)["code"] == "device_auth_failed"
    assert rig.store.audit(serial=rig.serial)[0].code == "device_auth_failed"
    assert rig.notices.events[-1].code == "device_auth_failed"


def test_an_enrollment_is_recorded_once_and_told(rig, client):
    rig.function.script(MATCH)
    status, answer = call(rig, client, "/v1/enroll", {"serial": rig.serial, "person": f" {GRACE} "})
    assert (status, answer) == (
        200,
        {
            "result": "enrolled",
            "code": None,
            "message": f"Photo saved for {GRACE}.",
            "person": GRACE,
        },
    )
    enrolls = [e for e in rig.store.audit(serial=rig.serial) if e.action == "enroll"]
    assert [(e.outcome, e.person) for e in enrolls] == [("enrolled", GRACE)]  # with the photo
    status, answer = call(rig, client, "/v1/enroll", {"serial": rig.serial, "person": "Mallory"})
    assert (answer["result"], answer["code"]) == ("refused", "locked")
    assert [(e.kind, e.outcome, e.code) for e in rig.notices.events] == [
        ("enroll", "enrolled", None),
        ("enroll", "refused", "locked"),
    ]


def test_status_and_lock_report_and_end_the_session(rig, client):
    rig.admin_adds(GRACE)
    path = f"/v1/status?serial={rig.serial}"
    assert call(rig, client, path) == (
        200,
        {"enrolled_people": 1, "unlocked": False, "locked_out_for_s": 0},
    )
    rig.function.script(MATCH)
    verify(rig, client)
    assert call(rig, client, path)[1]["unlocked"] is True
    for _ in range(2):  # the same answer without a session to end
        assert call(rig, client, "/v1/lock", {"serial": rig.serial}) == (200, {"unlocked": False})
        assert call(rig, client, path)[1]["unlocked"] is False
    for _ in range(5):
        rig.function.script(NO_MATCH)
        verify(rig, client)
    rig.clock.advance(10)
    assert call(rig, client, path)[1]["locked_out_for_s"] == 20


@pytest.mark.parametrize("skew_s", [-61, 61])
def test_a_request_off_the_connectors_clock_is_clock_skew(rig, client, skew_s):
    status, answer = call(rig, client, "/v1/verify", {"serial": rig.serial}, skew_s=skew_s)
    assert (status, answer["error"]["code"]) == (401, "clock_skew")
    rig.clock.advance(skew_s)  # the connector's clock is the one that counts
    status, answer = call(rig, client, "/v1/verify", {"serial": rig.serial})
    assert (status, answer["code"]) == (200, "not_enrolled")


def test_health_is_degraded_while_the_function_is_unreachable(rig, client):
    rig.function.unreachable = "the comparison service timed out"
    answer = client.get("/healthz")
    assert answer.status_code == 200
    assert answer.json["status"] == "degraded"
    assert answer.json["checks"]["function"] == "the comparison service timed out"


def test_closing_drains_the_notices_and_lets_go_of_the_function(rig):
    rig.rt.close()
    assert rig.notices.closed_with == NOTIFY_DRAIN_S and rig.function.closed


def test_sessions_a_crash_left_open_are_signed_out_at_start(rig):
    rig.store.record_device_session(rig.serial, {"SessionId": "left-by-a-crash"})
    rig.store.record_device_session("NOSUCHDEVICE", {"SessionId": "unknown"})
    assert rig.rt.sign_out_leftovers() == 1
    assert rig.camera.sign_outs == [(rig.serial, {"SessionId": "left-by-a-crash"})]
    assert rig.store.device_sessions() == []
