"""No device web session left open (REFERENCE §1: they never expire and are capped): each one is
recorded in the store, encrypted, from its sign-in's answer until its sign-out; what a crash left
is signed out at the next start, and kept while its device does not answer. Session ids never
reach a log (they are registered with the run's leak scan)."""

from __future__ import annotations

import io
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from faceid_core.errors import FaceIdError
from PIL import Image

from connector.config import load_config
from connector.device import SIGNIN_PATH, DeviceAccess, DeviceClient, TlsPolicy
from connector.runtime import build_runtime
from connector.store import Store
from devkit.connector_e2e import open_store
from devkit.photos import write_frames
from devkit.proc_group import crash
from devkit.procs import free_port
from devkit.secrets_used import register as register_secret
from devkit.simulator import DeviceSimulator
from devkit.stack import start_stack

PASSWORD = "pw-" + secrets.token_urlsafe(12)


def jpeg_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (320, 240), (90, 140, 200)).save(out, "JPEG")
    return out.getvalue()


FRAME = jpeg_bytes()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s} s")
        time.sleep(0.01)


@pytest.fixture
def sim() -> Iterator[DeviceSimulator]:
    with DeviceSimulator({"admin": PASSWORD}, [FRAME]) as device:
        yield device


@pytest.fixture
def store(tmp_path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "faceid.db", secrets.token_bytes(32))
    yield opened
    opened.close()


def access(sim: DeviceSimulator, serial: str = "SIM1") -> DeviceAccess:
    return DeviceAccess(sim.host, "admin", PASSWORD, TlsPolicy(ca_bundle=sim.ca_pem_path), serial)


def sign_in_by_hand(sim: DeviceSimulator) -> str:
    """A session opened on the device by someone who then vanished (a crashed connector)."""
    raw = requests.Session()
    raw.trust_env = False
    try:
        form = {"username": "admin", "password": PASSWORD}
        answer = raw.post(f"{sim.url}{SIGNIN_PATH}", data=form, verify=sim.ca_pem_path)
        assert answer.status_code == 200
        session_id = answer.cookies[sim.cookie_name]
    finally:
        raw.close()
    register_secret("device session id", session_id)
    return str(session_id)


# --- the store's record ----------------------------------------------------------------------


def test_a_recorded_session_is_encrypted_bound_to_its_serial_and_forgotten(store):
    session_id = secrets.token_urlsafe(24)
    entry = store.record_device_session("SIM1", {"SessionId": session_id})
    [recorded] = store.device_sessions()
    assert (recorded.entry, recorded.serial, recorded.cookies) == (
        entry,
        "SIM1",
        {"SessionId": session_id},
    )
    assert session_id not in repr(recorded)
    conn = sqlite3.connect(store.path)
    try:
        raw = b"".join(
            bytes(cell)
            for cell in conn.execute("SELECT nonce, ciphertext FROM device_sessions").fetchone()
        )
        assert session_id.encode() not in raw
        conn.execute("UPDATE device_sessions SET serial = 'OTHER'")  # moved to another device
        conn.commit()
    finally:
        conn.close()
    assert store.device_sessions()[0].cookies is None  # fails its integrity check
    assert store.count_device_sessions() == 1
    store.forget_device_session(entry)
    assert store.device_sessions() == [] and store.count_device_sessions() == 0


# --- the client keeps the record --------------------------------------------------------------


def test_the_session_is_recorded_before_the_snapshot_and_forgotten_once_signed_out(sim, store):
    sim.set_mode(slow_s=2.0, slow_on=["snapshot"])  # time to look while the snapshot is asked
    client = DeviceClient(ledger=store)
    with ThreadPoolExecutor(1) as pool:
        shot = pool.submit(client.snapshot, access(sim))
        wait_for(lambda: store.count_device_sessions() == 1, 5, "the session recorded")
        [recorded] = store.device_sessions()
        assert recorded.serial == "SIM1" and recorded.cookies is not None
        register_secret("device session id", recorded.cookies["SessionId"])
        assert sim.has_session(recorded.cookies["SessionId"])  # the very session in use
        assert sim.stats()["snapshots_served"] == 0
        assert shot.result(timeout=15).jpeg == FRAME
    assert store.device_sessions() == []
    assert sim.stats()["open_sessions"] == 0
    client.close()


def test_a_failed_sign_out_keeps_the_record_and_is_counted(sim, store):
    failures = []
    client = DeviceClient(
        ledger=store, signout_budget_s=0.5, on_signout_failure=lambda: failures.append(1)
    )
    sim.set_mode(endless_on=["signout"])
    assert client.snapshot(access(sim)).jpeg == FRAME
    assert failures == [1] and client.failed_signouts == 1
    assert store.count_device_sessions() == 1  # the next start signs it out again
    client.close()


class SpyLedger:
    """The store as the client's ledger, noting each call with the device's sign-outs so far."""

    def __init__(self, store: Store, sim: DeviceSimulator) -> None:
        self.store, self.sim = store, sim
        self.calls: list[tuple[str, int]] = []

    def record_device_session(self, serial: str, cookies: Mapping[str, str]) -> int:
        self.calls.append(("record", self.sim.stats()["signouts"]))
        return self.store.record_device_session(serial, cookies)

    def forget_device_session(self, entry: int) -> None:
        self.calls.append(("forget", self.sim.stats()["signouts"]))
        self.store.forget_device_session(entry)


def test_a_refused_sign_in_with_a_cookie_is_recorded_then_signed_out(sim, store):
    sim.set_mode(signin_status=500)
    ledger = SpyLedger(store, sim)
    client = DeviceClient(ledger=ledger)
    with pytest.raises(FaceIdError) as caught:
        client.snapshot(access(sim))
    assert caught.value.code == "device_unreachable"
    assert ledger.calls == [("record", 0), ("forget", 1)]  # before the sign-out, then after it
    assert store.count_device_sessions() == 0 and sim.stats()["open_sessions"] == 0
    client.close()


# --- start-up: what a crash left --------------------------------------------------------------


@pytest.fixture
def runtime_for(tmp_path, monkeypatch):
    """A runtime built from a configuration with these [[devices]] blocks."""
    monkeypatch.setenv("FACEID_TEST_STORE_KEY", secrets.token_hex(32))
    monkeypatch.setenv("FACEID_TEST_DEVICE_PASSWORD", PASSWORD)
    built = []

    def build(devices: str):
        path = tmp_path / "faceid.toml"
        path.write_text(
            f'[function]\nurl = "http://127.0.0.1:{free_port()}/"\nauth = "none"\n'
            '[store]\npath = "faceid.db"\nkey = "env:FACEID_TEST_STORE_KEY"\n'
            '[device_defaults]\nusername = "admin"\n'
            'password = "env:FACEID_TEST_DEVICE_PASSWORD"\n' + devices
        )
        rt = build_runtime(load_config(path))
        built.append(rt)
        return rt

    yield build
    for rt in built:
        rt.close()


def device_block(serial: str, host: str, tls: str) -> str:
    return f'[[devices]]\nserial = "{serial}"\nhost = "{host}"\ntls = {tls}\n'


def test_leftovers_are_signed_out_at_start_and_kept_while_their_device_is_unreachable(
    sim, runtime_for, capsys
):
    refused = f"127.0.0.1:{free_port()}"  # nobody listens there
    pin = f'{{ fingerprint_sha256 = "{"ab" * 32}" }}'
    rt = runtime_for(
        device_block("UP", sim.host, f'{{ ca_bundle = "{sim.ca_pem_path}" }}')
        + device_block("DOWN", refused, pin)
    )
    left = sign_in_by_hand(sim)
    unreachable, removed = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    for value in (unreachable, removed):
        register_secret("device session id", value)
    rt.store.record_device_session("UP", {"SessionId": left})
    rt.store.record_device_session("DOWN", {"SessionId": unreachable})
    rt.store.record_device_session("GONE", {"SessionId": removed})  # no longer configured
    assert b"faceid_device_sessions_open 3.0" in rt.metrics.exposition()
    assert rt.sign_out_leftovers() == 1
    assert sim.stats()["open_sessions"] == 0 and sim.stats()["signouts"] == 1
    assert [s.serial for s in rt.store.device_sessions()] == ["DOWN"]
    assert b"faceid_device_sessions_open 1.0" in rt.metrics.exposition()
    assert b"faceid_device_signout_failures_total 1.0" in rt.metrics.exposition()
    logged = capsys.readouterr().out
    assert "could not be signed out; retried at the next start" in logged
    assert "device no longer configured" in logged
    assert all(value not in logged for value in (left, unreachable, removed))


def test_a_leftover_the_device_no_longer_knows_is_forgotten(sim, runtime_for):
    rt = runtime_for(device_block("UP", sim.host, f'{{ ca_bundle = "{sim.ca_pem_path}" }}'))
    rt.store.record_device_session("UP", {"SessionId": secrets.token_urlsafe(24)})  # 401
    assert rt.sign_out_leftovers() == 1
    assert rt.store.device_sessions() == []
    assert rt.device_client.failed_signouts == 0


# --- the whole stack: SIGKILL during a snapshot, then a restart ---------------------------------


@pytest.mark.slow
def test_a_session_held_by_a_killed_connector_is_signed_out_when_it_starts_again(tmp_path):
    frames = write_frames(tmp_path / "frames")
    stack = start_stack(
        tmp_path / "stack",
        images=frames["grace_hopper"],
        in_process=True,  # the simulator outlives the connector
        device_defaults={"budget_s": 60},  # the snapshot waits for the kill, not the deadline
    )
    try:
        device = stack.devices[0]
        sim = device.simulator
        assert sim is not None
        sim.set_mode(slow_s=120, slow_on=["snapshot"])
        gone = threading.Event()

        def enroll() -> None:  # the first enrollment at an empty device takes a snapshot
            try:
                stack.call("/v1/enroll", device, {"serial": device.serial, "person": "Ada"})
            except requests.RequestException:
                gone.set()

        caller = threading.Thread(target=enroll, daemon=True)
        caller.start()
        store = open_store(stack)
        try:
            wait_for(lambda: store.count_device_sessions() == 1, 30, "the session recorded")
            [held] = store.device_sessions()
            assert held.cookies is not None
            session_id = held.cookies["SessionId"]
            register_secret("device session id", session_id)
            assert sim.has_session(session_id) and sim.stats()["snapshots_served"] == 0

            crash(stack.connector)  # mid-snapshot: no finally runs
            caller.join(30)
            assert gone.is_set()
            assert sim.stats()["open_sessions"] == 1 and sim.has_session(session_id)
            assert store.count_device_sessions() == 1

            stack.restart_connector("connector-restarted")
            assert sim.stats()["open_sessions"] == 0 and not sim.has_session(session_id)
            assert store.device_sessions() == []
        finally:
            store.close()
        logged = stack.connector.stdout() + stack.connector.stderr()
        records = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
        assert any(
            r.get("message") == "device web sessions left by a crash"
            and (r.get("signed_out"), r.get("kept")) == (1, 0)
            for r in records
        )
        assert session_id not in logged
    finally:
        stack.stop()
