"""The device client against a simulated RoomOS device over real HTTPS on 127.0.0.1."""

from __future__ import annotations

import io
import logging
import secrets
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from faceid_core.errors import DeviceError, FaceIdError
from PIL import Image

from connector.device import SIGNIN_PATH, DeviceAccess, DeviceClient, Snapshot, TlsPolicy
from devkit.certs import self_signed_identity
from devkit.simulator import DeviceSimulator

PASSWORD = "pw-" + secrets.token_urlsafe(12)
VIEWER_PASSWORD = "pw-" + secrets.token_urlsafe(12)


def jpeg_bytes(size: tuple[int, int] = (320, 240)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (90, 140, 200)).save(out, "JPEG")
    return out.getvalue()


FRAME = jpeg_bytes()


@pytest.fixture
def sim():
    with DeviceSimulator({"admin": PASSWORD, "viewer": VIEWER_PASSWORD}, [FRAME]) as device:
        yield device


@pytest.fixture
def client():
    device_client = DeviceClient(connect_timeout_s=1.0, read_timeout_s=2.0)
    yield device_client
    device_client.close()


@pytest.fixture(autouse=True)
def every_session_is_signed_out(sim, client):
    yield
    assert sim.stats()["open_sessions"] == 0, "a device session was left open"
    assert client.open_sessions == 0


def access(sim: DeviceSimulator, password: str = PASSWORD, tls: TlsPolicy | None = None):
    return DeviceAccess(sim.host, "admin", password, tls or TlsPolicy(ca_bundle=sim.ca_pem_path))


def failure(client: DeviceClient, device_access: DeviceAccess) -> DeviceError:
    with pytest.raises(DeviceError) as caught:
        client.snapshot(device_access)
    return caught.value


# Deadline tests: short budgets, and a generous slack for a loaded 2-core machine.
BUDGET_S, SIGNOUT_BUDGET_S, SLACK_S = 1.5, 1.0, 2.0


@pytest.fixture
def bounded():
    device_client = DeviceClient(
        connect_timeout_s=1.0,
        read_timeout_s=1.0,  # longer than any trickle's gap: only the deadline can end it
        budget_s=BUDGET_S,
        signout_budget_s=SIGNOUT_BUDGET_S,
    )
    yield device_client
    assert device_client.open_sessions == 0
    device_client.close()


def timed_snapshot(client: DeviceClient, device_access: DeviceAccess):
    """(the Snapshot or the FaceIdError, seconds taken), the call given a bounded time in a
    thread: one that overruns fails the test instead of hanging it (closing the simulator
    then ends it)."""

    def call() -> tuple[Snapshot | FaceIdError, float]:
        started = time.monotonic()
        try:
            outcome: Snapshot | FaceIdError = client.snapshot(device_access)
        except FaceIdError as exc:
            outcome = exc
        return outcome, time.monotonic() - started

    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(call).result(timeout=BUDGET_S + SIGNOUT_BUDGET_S + 2 * SLACK_S)
    except TimeoutError:
        pytest.fail("the device call did not end within its budget")
    finally:
        pool.shutdown(wait=False)


def test_snapshot_returns_the_device_jpeg_and_signs_out(sim, client):
    shot = client.snapshot(access(sim))
    assert shot.jpeg == FRAME
    assert min(shot.signin_ms, shot.snapshot_ms, shot.signout_ms) >= 0
    stats = sim.stats()
    assert (stats["signins"], stats["snapshots_served"], stats["signouts"]) == (1, 1, 1)


@pytest.mark.parametrize("cookie_name", ["SessionId", "SecureSessionId", "WebSession"])
def test_session_cookie_is_taken_by_name_from_the_sign_in_answer(client, cookie_name):
    with DeviceSimulator({"admin": PASSWORD}, [FRAME], cookie_name=cookie_name) as device:
        assert client.snapshot(access(device)).jpeg == FRAME
        assert device.stats()["signouts"] == 1


@pytest.mark.parametrize("user", ["admin", "nobody"])
def test_wrong_credentials_sign_in_exactly_once(sim, client, user):
    error = failure(client, DeviceAccess(sim.host, user, "wrong", TlsPolicy(sim.ca_pem_path)))
    assert error.code == "device_auth_failed"
    assert "not retried" in error.message
    stats = sim.stats()
    assert (stats["signin_attempts"], stats["failed_logins"], stats["signins"]) == (1, 1, 0)


def test_account_locked_after_five_failures_stays_refused_with_the_right_password(sim, client):
    for _ in range(5):
        assert failure(client, access(sim, "wrong")).code == "device_auth_failed"
    assert failure(client, access(sim)).code == "device_auth_failed"
    stats = sim.stats()
    assert stats["signin_attempts"] == 6 and stats["locked_accounts"] == 1


@pytest.mark.parametrize(
    ("switches", "expected"),
    [
        ({"no_option_key": True}, "HTTP 403): is the Remote Monitoring option key installed"),
        ({"fault": "garbage_json"}, "is not JSON"),
        ({"fault": "missing_data"}, "returned no snapshot"),
        ({"fault": "empty_data"}, "returned no snapshot"),
        ({"fault": "bad_base64"}, "not valid base64"),
        ({"fault": "not_jpeg"}, "not a JPEG"),
    ],
)
def test_bad_snapshot_answers_are_snapshot_unavailable_and_still_sign_out(
    sim, client, switches, expected
):
    sim.set_mode(**switches)
    error = failure(client, access(sim))
    assert error.code == "snapshot_unavailable"
    assert expected in error.message
    assert sim.stats()["signouts"] == 1


def test_snapshot_past_the_read_timeout_is_unreachable_and_still_signs_out(sim):
    sim.set_mode(slow_s=1.0, slow_on=["snapshot"])
    fast = DeviceClient(connect_timeout_s=0.5, read_timeout_s=0.3)
    started = time.monotonic()
    error = failure(fast, access(sim))
    assert time.monotonic() - started < 0.9
    assert error.code == "device_unreachable"
    assert "did not answer the snapshot in time" in error.message
    assert sim.stats()["signouts"] == 1
    fast.close()


def test_slow_sign_in_is_unreachable_and_may_leave_a_session_the_client_cannot_see(sim):
    sim.set_mode(slow_s=0.6, slow_on=["signin"])
    fast = DeviceClient(connect_timeout_s=0.5, read_timeout_s=0.2)
    error = failure(fast, access(sim))
    assert error.code == "device_unreachable"
    assert "sign-in" in error.message
    # The device completes the sign-in after the client gave up: no cookie, no sign-out.
    deadline = time.monotonic() + 3
    while sim.stats()["open_sessions"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sim.drop_sessions() == 1
    fast.close()


def test_budget_bounds_sign_in_plus_snapshot_and_sign_out_still_runs(sim):
    sim.set_mode(slow_s=0.3)
    bounded = DeviceClient(read_timeout_s=5.0, budget_s=0.5, signout_budget_s=1.0)
    started = time.monotonic()
    error = failure(bounded, access(sim))
    elapsed = time.monotonic() - started
    assert error.code == "device_unreachable" and "snapshot" in error.message
    assert elapsed < 0.5 + 0.3 + 0.4  # budget, then one slow sign-out, plus scheduling slack
    assert sim.stats()["signouts"] == 1
    bounded.close()


@pytest.mark.parametrize(
    ("switches", "code", "until_the_deadline"),
    [
        pytest.param(
            {"trickle_ms": 100, "trickle_on": ["snapshot"]},
            "device_unreachable",
            True,
            id="snapshot-body-a-byte-every-100ms",
        ),
        pytest.param(
            {"trickle_ms": 100, "trickle_on": ["snapshot"], "trickle_headers": True},
            "device_unreachable",
            True,
            id="snapshot-headers-a-byte-every-100ms",
        ),
        pytest.param(
            {"endless_on": ["snapshot"]}, "device_unreachable", True, id="snapshot-endless-body"
        ),
        pytest.param(
            {"huge_on": ["snapshot"]}, "snapshot_unavailable", False, id="snapshot-huge-body"
        ),
        pytest.param(
            # The sign-in's body is 15 bytes: slow enough that it cannot end within the budget.
            {"trickle_ms": 400, "trickle_on": ["signin"]},
            "device_unreachable",
            True,
            id="signin-body-a-byte-every-400ms",
        ),
        pytest.param(
            {"endless_on": ["signin"]}, "device_unreachable", True, id="signin-endless-body"
        ),
        pytest.param({"huge_on": ["signin"]}, "device_unreachable", False, id="signin-huge-body"),
    ],
)
def test_an_answer_however_sent_ends_within_the_budget_and_the_session_is_signed_out(
    sim, bounded, switches, code, until_the_deadline
):
    sim.set_mode(**switches)
    outcome, elapsed = timed_snapshot(bounded, access(sim))
    assert isinstance(outcome, FaceIdError), outcome
    assert outcome.code == code
    assert elapsed < BUDGET_S + SLACK_S
    if until_the_deadline:
        assert "in time" in outcome.message
        assert elapsed >= BUDGET_S * 0.9  # the deadline ended it, nothing else
    stats = sim.stats()
    assert (stats["signins"], stats["signouts"], stats["open_sessions"]) == (1, 1, 0)
    assert bounded.failed_signouts == 0


def test_sign_in_headers_trickled_past_the_budget_end_in_time_without_a_session_to_sign_out(
    sim, bounded
):
    sim.set_mode(trickle_ms=100, trickle_on=["signin"], trickle_headers=True)
    outcome, elapsed = timed_snapshot(bounded, access(sim))
    assert isinstance(outcome, FaceIdError) and outcome.code == "device_unreachable"
    assert "did not answer the sign-in in time" in outcome.message
    assert BUDGET_S * 0.9 <= elapsed < BUDGET_S + SLACK_S
    # Its cookie never arrived: the one session nobody but a device restart ends
    # (docs/security.md, Known limits).
    assert sim.stats()["signouts"] == 0
    assert sim.drop_sessions() == 1


@pytest.mark.parametrize(
    ("switches", "fails"),
    [
        pytest.param(
            {"trickle_ms": 100, "trickle_on": ["signout"], "trickle_headers": True},
            True,
            id="headers-a-byte-every-100ms",
        ),
        pytest.param(
            {"trickle_ms": 400, "trickle_on": ["signout"]}, True, id="body-a-byte-every-400ms"
        ),
        pytest.param({"endless_on": ["signout"]}, True, id="endless-body"),
        pytest.param({"huge_on": ["signout"]}, False, id="huge-body-after-a-200"),
    ],
)
def test_a_sign_out_however_answered_ends_within_its_own_budget(sim, bounded, switches, fails):
    sim.set_mode(**switches)
    outcome, elapsed = timed_snapshot(bounded, access(sim))
    assert isinstance(outcome, Snapshot) and outcome.jpeg == FRAME
    assert outcome.signout_ms / 1000 < SIGNOUT_BUDGET_S + SLACK_S
    assert elapsed < SIGNOUT_BUDGET_S + SLACK_S
    assert bounded.failed_signouts == int(fails)
    assert sim.stats()["open_sessions"] == 0  # the device signs out before it answers


@pytest.mark.parametrize(
    ("status", "code"), [(500, "device_unreachable"), (401, "device_auth_failed")]
)
def test_a_failed_sign_in_that_sets_a_cookie_is_still_signed_out(sim, client, status, code):
    sim.set_mode(signin_status=status)
    error = failure(client, access(sim))
    assert error.code == code and f"HTTP {status}" in error.message
    stats = sim.stats()
    assert (stats["signins"], stats["signouts"], stats["open_sessions"]) == (1, 1, 0)
    assert client.failed_signouts == 0


def test_a_session_cookie_the_cookie_policy_refuses_is_still_used_and_signed_out(sim, client):
    sim.set_mode(cookie_attrs="Domain=elsewhere.invalid")
    raw = requests.Session()
    raw.trust_env = False
    form = {"username": "admin", "password": PASSWORD}
    answer = raw.post(f"{sim.url}{SIGNIN_PATH}", data=form, verify=sim.ca_pem_path)
    assert answer.status_code == 200 and "Set-Cookie" in answer.headers
    assert not answer.cookies, "requests' cookie jar should refuse a cookie for another domain"
    assert sim.drop_sessions() == 1
    raw.close()
    assert client.snapshot(access(sim)).jpeg == FRAME
    stats = sim.stats()
    assert (stats["signins"], stats["signouts"], stats["open_sessions"]) == (2, 1, 0)


def test_down_device_is_unreachable_also_on_a_pooled_connection(sim, client):
    client.snapshot(access(sim))
    sim.set_mode(down=True)
    error = failure(client, access(sim))
    assert error.code == "device_unreachable"
    assert "closed the connection" in error.message
    sim.set_mode(down=False)
    assert client.snapshot(access(sim)).jpeg == FRAME


def test_refused_connection_is_unreachable(client):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = failure(client, DeviceAccess(f"127.0.0.1:{port}", "admin", PASSWORD))
    assert error.code == "device_unreachable"
    assert "connection refused" in error.message


def test_ca_bundle_policy_checks_the_name_and_accepts_localhost(sim, client):
    by_name = DeviceAccess(f"localhost:{sim.port}", "admin", PASSWORD, TlsPolicy(sim.ca_pem_path))
    assert client.snapshot(by_name).jpeg == FRAME


@pytest.mark.parametrize("style", ["colons", "plain-lowercase"])
def test_pinned_fingerprint_accepts_the_device(sim, client, style):
    pin = sim.fingerprint if style == "colons" else sim.fingerprint.replace(":", "").lower()
    assert client.snapshot(access(sim, tls=TlsPolicy(fingerprint_sha256=pin))).jpeg == FRAME


def test_wrong_pin_is_tls_error_before_any_credentials_are_sent(sim, client):
    error = failure(client, access(sim, tls=TlsPolicy(fingerprint_sha256="ab" * 32)))
    assert error.code == "device_tls_error"
    assert sim.fingerprint in error.message  # tells the administrator what the device presents
    assert sim.stats()["device_requests"] == 0


def test_default_trust_rejects_the_self_signed_device_before_credentials(sim, client):
    error = failure(client, access(sim, tls=TlsPolicy()))
    assert error.code == "device_tls_error"
    assert "self-signed" in error.message
    assert sim.stats()["device_requests"] == 0


def test_ca_bundle_of_another_certificate_is_tls_error(sim, client, tmp_path):
    other = tmp_path / "other.pem"
    other.write_bytes(self_signed_identity(["127.0.0.1"])[0])
    error = failure(client, access(sim, tls=TlsPolicy(ca_bundle=str(other))))
    assert error.code == "device_tls_error"
    assert "CA bundle" in error.message
    assert sim.stats()["device_requests"] == 0


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_insecure_policy_skips_verification_only_when_configured(sim, client):
    assert client.snapshot(access(sim, tls=TlsPolicy(insecure=True))).jpeg == FRAME


def test_session_limit_is_reported_as_too_many_web_sessions(sim, client):
    raw = requests.Session()
    raw.trust_env = False  # else REQUESTS_CA_BUNDLE overrides Session.verify
    raw.verify = sim.ca_pem_path
    for user, password, count in (("admin", PASSWORD, 20), ("viewer", VIEWER_PASSWORD, 10)):
        for _ in range(count):
            form = {"username": user, "password": password}
            assert raw.post(f"{sim.url}/web/signin/open", data=form).status_code == 200
    error = failure(client, access(sim))
    assert error.code == "device_unreachable"
    assert "too many open web sessions" in error.message
    assert sim.stats()["session_limit_refusals"] == 1
    assert sim.drop_sessions() == 30
    raw.close()


def test_sign_out_failure_is_logged_and_does_not_hide_the_snapshot_error(sim, capsys):
    sim.set_mode(no_option_key=True, slow_s=0.6, slow_on=["signout"])
    short = DeviceClient(signout_budget_s=0.2)
    error = failure(short, access(sim))
    assert error.code == "snapshot_unavailable"
    assert short.failed_signouts == 1
    assert "Device sign-out failed" in capsys.readouterr().out
    deadline = time.monotonic() + 3  # the slow sign-out still lands on the device
    while sim.stats()["open_sessions"] and time.monotonic() < deadline:
        time.sleep(0.05)
    short.close()


def test_concurrent_calls_to_one_device_never_share_a_session(sim, client):
    with ThreadPoolExecutor(max_workers=8) as pool:
        shots = list(pool.map(lambda _: client.snapshot(access(sim)), range(16)))
    assert all(shot.jpeg == FRAME for shot in shots)
    stats = sim.stats()
    assert stats["signins"] == stats["signouts"] == 16
    assert client.failed_signouts == 0


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_password_never_appears_in_errors_or_logs(sim, client, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "pw-" + secrets.token_urlsafe(12)
    messages = [repr(access(sim)), repr(access(sim, wrong))]
    scenarios = [
        (access(sim, wrong), {}),
        (access(sim, tls=TlsPolicy(fingerprint_sha256="cd" * 32)), {}),
        (access(sim, tls=TlsPolicy()), {}),
        (access(sim, tls=TlsPolicy(insecure=True)), {"no_option_key": True}),
        (access(sim), {"fault": "garbage_json"}),
        (access(sim), {"down": True}),
    ]
    for device_access, switches in scenarios:
        sim.set_mode(**{"no_option_key": False, "fault": None, "down": False, **switches})
        error = failure(client, device_access)
        messages += [str(error), repr(error), error.message, str(error.__context__)]
    sim.set_mode(down=False)
    captured = capsys.readouterr()
    text = "\n".join([*messages, captured.out, captured.err, caplog.text])
    assert PASSWORD not in text and wrong not in text


def test_device_access_repr_hides_the_password(sim):
    assert PASSWORD not in repr(access(sim))


@pytest.mark.parametrize(
    "host", ["https://10.0.0.1", "10.0.0.1/web", "admin@10.0.0.1", "10.0.0.1:99999", "", "a b"]
)
def test_malformed_device_address_is_a_config_error(host):
    with pytest.raises(FaceIdError) as caught:
        DeviceAccess(host, "admin", PASSWORD)
    assert caught.value.code == "config_error"


@pytest.mark.parametrize(
    "policy",
    [
        {"ca_bundle": "/x.pem", "insecure": True},
        {"fingerprint_sha256": "ab" * 32, "insecure": True},
        {"fingerprint_sha256": "not hex"},
        {"fingerprint_sha256": "ab" * 20},
    ],
)
def test_tls_policy_takes_one_valid_choice(policy):
    with pytest.raises(FaceIdError) as caught:
        TlsPolicy(**policy)
    assert caught.value.code == "config_error"
