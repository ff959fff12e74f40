"""The simulated device speaks REFERENCE §1, including its limits, lockout and failure switches."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image

from connector.device import DeviceAccess, DeviceClient, TlsPolicy
from devkit.simulator import DeviceSimulator

PASSWORD = "sim-test-password"


def image_bytes(fmt: str, color: tuple[int, int, int], size=(64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, fmt)
    return out.getvalue()


class Browser:
    """A plain HTTPS client trusting the simulator's certificate, cookies handled by hand."""

    def __init__(self, sim: DeviceSimulator) -> None:
        self.sim = sim
        self.http = requests.Session()
        self.http.trust_env = False  # else REQUESTS_CA_BUNDLE overrides Session.verify
        self.http.verify = sim.ca_pem_path

    def sign_in(self, user: str = "admin", password: str = PASSWORD) -> requests.Response:
        form = {"username": user, "password": password}
        response = self.http.post(f"{self.sim.url}/web/signin/open", data=form)
        self.http.cookies.clear()
        return response

    def snapshot(self, session_id: str | None, query: str = "SourceType=localInput&SourceId=1"):
        return self.http.get(
            f"{self.sim.url}/web/api/snapshot/get_b64?{query}", cookies=self._cookie(session_id)
        )

    def sign_out(self, session_id: str | None) -> requests.Response:
        return self.http.get(f"{self.sim.url}/web/signin/signout", cookies=self._cookie(session_id))

    def control(self, method: str, path: str, token: str | None, **kwargs):
        headers = {"X-Sim-Control": token} if token is not None else {}
        return self.http.request(method, f"{self.sim.url}{path}", headers=headers, **kwargs)

    def _cookie(self, session_id: str | None) -> dict[str, str]:
        return {self.sim.cookie_name: session_id} if session_id else {}


@pytest.fixture
def sim():
    with DeviceSimulator({"admin": PASSWORD, "viewer": PASSWORD}, lockout_s=0.4) as device:
        yield device


@pytest.fixture
def browser(sim):
    client = Browser(sim)
    yield client
    client.http.close()


def test_sign_in_cookie_gives_a_snapshot_until_sign_out(sim, browser):
    signed_in = browser.sign_in()
    assert signed_in.status_code == 200
    session_id = signed_in.cookies["SessionId"]
    assert browser.snapshot(None).status_code == 401
    answer = browser.snapshot(session_id)
    assert answer.status_code == 200
    assert base64.b64decode(answer.json()["data"]).startswith(b"\xff\xd8\xff")
    assert browser.sign_out(session_id).status_code == 200
    assert browser.snapshot(session_id).status_code == 401
    assert browser.sign_out(session_id).status_code == 401
    stats = sim.stats()
    assert (stats["signins"], stats["signouts"], stats["snapshots_served"]) == (1, 1, 1)
    assert stats["open_sessions"] == 0


def test_snapshot_of_an_unknown_source_is_refused(browser):
    session_id = browser.sign_in().cookies["SessionId"]
    assert browser.snapshot(session_id, "SourceType=remote&SourceId=9").status_code == 400
    browser.sign_out(session_id)


def test_five_bad_logins_lock_the_account_for_the_lockout_time(sim, browser):
    assert [browser.sign_in(password="bad").status_code for _ in range(5)] == [401] * 5
    assert browser.sign_in().status_code == 401
    assert sim.stats()["locked_accounts"] == 1
    assert browser.sign_in("viewer").status_code == 200  # other accounts are not locked
    time.sleep(0.45)
    assert browser.sign_in().status_code == 200
    assert sim.stats()["locked_accounts"] == 0
    sim.drop_sessions()


def test_a_good_login_resets_the_failure_count(browser):
    for _ in range(4):
        assert browser.sign_in(password="bad").status_code == 401
    assert browser.sign_in().status_code == 200
    for _ in range(4):
        assert browser.sign_in(password="bad").status_code == 401
    assert browser.sign_in().status_code == 200


def test_sessions_never_expire_and_are_capped_per_user_then_in_total(sim, browser):
    admin = [browser.sign_in().cookies["SessionId"] for _ in range(20)]
    refused = browser.sign_in()
    assert refused.status_code == 503 and b"Maximum number of sessions" in refused.content
    assert all(browser.sign_in("viewer").status_code == 200 for _ in range(10))
    assert browser.sign_in("viewer").status_code == 503  # 30 in total
    assert browser.sign_out(admin[0]).status_code == 200
    assert browser.sign_in("viewer").status_code == 200
    assert sim.stats()["session_limit_refusals"] == 2
    assert browser.snapshot(admin[1]).status_code == 200  # still valid: no expiry
    assert sim.drop_sessions() == 30


def test_control_endpoints_need_the_token(sim, browser):
    assert browser.control("GET", "/_sim/stats", None).status_code == 403
    assert browser.control("GET", "/_sim/stats", "wrong").status_code == 403
    refused = browser.control("POST", "/_sim/control", "wrong", json={"no_option_key": True})
    assert refused.status_code == 403
    assert sim.mode.no_option_key is False
    stats = browser.control("GET", "/_sim/stats", sim.control_token)
    assert stats.status_code == 200 and stats.json()["open_sessions"] == 0


def test_control_endpoint_switches_modes_at_run_time(sim, browser):
    token = sim.control_token
    switched = browser.control("POST", "/_sim/control", token, json={"no_option_key": True})
    assert switched.json()["mode"]["no_option_key"] is True
    session_id = browser.sign_in().cookies["SessionId"]
    refused = browser.snapshot(session_id)
    assert refused.status_code == 403 and b"RemoteMonitoring" in refused.content
    browser.control("POST", "/_sim/control", token, json={"no_option_key": False, "black": True})
    black = base64.b64decode(browser.snapshot(session_id).json()["data"])
    with Image.open(io.BytesIO(black)) as image:
        assert image.size == (1920, 1080)
        assert image.convert("L").getextrema()[1] < 16
    browser.sign_out(session_id)
    for bad in ({"nonsense": 1}, {"fault": "nope"}, {"slow_on": ["elsewhere"]}, [1]):
        assert browser.control("POST", "/_sim/control", token, json=bad).status_code == 400
    reset = browser.control("POST", "/_sim/control", token, json={"reset_stats": True})
    assert reset.status_code == 200 and sim.stats()["signins"] == 0


def test_transport_faults_are_switched_through_the_control_endpoint(sim, browser):
    token = sim.control_token
    faults = {
        "trickle_ms": 10,
        "trickle_on": ["signin"],
        "trickle_headers": True,
        "endless_on": ["snapshot"],
        "huge_on": ["signout"],
        "signin_status": 500,
        "cookie_attrs": "Domain=elsewhere.invalid",
    }
    switched = browser.control("POST", "/_sim/control", token, json=faults)
    assert (
        switched.status_code == 200 and switched.json()["mode"] | faults == switched.json()["mode"]
    )
    started = time.monotonic()
    refused = browser.sign_in()  # 500, its status line and headers a byte every 10 ms
    assert (
        refused.status_code == 500 and "Domain=elsewhere.invalid" in refused.headers["Set-Cookie"]
    )
    assert time.monotonic() - started > 100 * 0.01  # well over 100 bytes of head
    assert sim.stats()["open_sessions"] == 1 and sim.drop_sessions() == 1
    for bad in (
        {"trickle_on": ["elsewhere"]},
        {"trickle_ms": -1},
        {"signin_status": "500"},
        {"signin_status": 99},
        {"cookie_attrs": "a\r\nSet-Cookie: b=c"},
        {"trickle_headers": 1},
    ):
        assert browser.control("POST", "/_sim/control", token, json=bad).status_code == 400


def test_folder_images_cycle_png_is_served_as_jpeg_and_size_pads_to_camera_frame(tmp_path):
    (tmp_path / "a.png").write_bytes(image_bytes("PNG", (255, 0, 0)))
    (tmp_path / "b.jpg").write_bytes(image_bytes("JPEG", (0, 0, 255)))
    (tmp_path / "notes.txt").write_text("ignored")
    with DeviceSimulator({"admin": PASSWORD}, tmp_path, size=(1920, 1080)) as device:
        client = DeviceClient()
        access = DeviceAccess(device.host, "admin", PASSWORD, TlsPolicy(device.ca_pem_path))
        frames = [client.snapshot(access).jpeg for _ in range(3)]
        client.close()
    colors = []
    for frame in frames:
        assert frame.startswith(b"\xff\xd8\xff")
        with Image.open(io.BytesIO(frame)) as image:
            assert image.size == (1920, 1080)
            colors.append(image.convert("RGB").getpixel((960, 540)))
    assert colors[0][0] > 200 and colors[1][2] > 200  # red PNG, then blue JPEG
    assert colors[2] == colors[0]


def test_image_switch_at_run_time_replaces_the_frames(sim, browser):
    blue = image_bytes("JPEG", (0, 0, 255))
    sim.set_mode(images=[blue])
    session_id = browser.sign_in().cookies["SessionId"]
    assert base64.b64decode(browser.snapshot(session_id).json()["data"]) == blue
    browser.sign_out(session_id)


def test_down_resets_device_requests_but_control_still_answers(sim, browser):
    sim.set_mode(down=True)
    with pytest.raises(requests.ConnectionError):
        browser.sign_in()
    token = sim.control_token
    up = browser.control("POST", "/_sim/control", token, json={"down": False})
    assert up.status_code == 200
    assert browser.sign_in().status_code == 200
    sim.drop_sessions()


def test_fifty_devices_in_one_process_share_a_certificate_and_serve_concurrently():
    sims = [DeviceSimulator({"admin": PASSWORD}).start() for _ in range(50)]
    client = DeviceClient()
    try:
        assert len({s.fingerprint for s in sims}) == 1
        policy = TlsPolicy(fingerprint_sha256=sims[0].fingerprint)
        with ThreadPoolExecutor(max_workers=10) as pool:
            shots = list(
                pool.map(
                    lambda s: client.snapshot(DeviceAccess(s.host, "admin", PASSWORD, policy)),
                    sims,
                )
            )
        assert len(shots) == 50
        assert all(s.stats()["signouts"] == 1 and s.stats()["open_sessions"] == 0 for s in sims)
    finally:
        client.close()
        with ThreadPoolExecutor(max_workers=50) as pool:
            list(pool.map(DeviceSimulator.close, sims))


@pytest.mark.slow
def test_command_line_prints_url_then_fingerprint_and_serves(tmp_path):
    cert = tmp_path / "device.pem"
    env = {**os.environ, "SIM_ACCOUNT": f"admin:{PASSWORD}"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devkit.simulator",
            "--account-env",
            "SIM_ACCOUNT",
            "--cert-out",
            str(cert),
            "--control-token",
            "ctl-token",
            "--size",
            "320x180",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        fingerprint = process.stdout.readline().split()
        assert url.startswith("https://127.0.0.1:")
        assert fingerprint[0] == "fingerprint" and len(fingerprint[1]) == 95
        assert process.stdout.readline().split() == ["control-token", "ctl-token"]
        client = DeviceClient()
        host = url.removeprefix("https://")
        shot = client.snapshot(DeviceAccess(host, "admin", PASSWORD, TlsPolicy(str(cert))))
        client.close()
        with Image.open(io.BytesIO(shot.jpeg)) as image:
            assert image.size == (320, 180)
        stats = requests.get(
            f"{url}/_sim/stats", headers={"X-Sim-Control": "ctl-token"}, verify=str(cert)
        ).json()
        assert stats["signouts"] == 1 and stats["open_sessions"] == 0
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
