"""The MXFace key from Secret Manager (MXFACE_KEY_SECRET), read by the real client from the fake
Secret Manager server: cached per instance, fetched once under concurrency, a failure kept a
few seconds, CRC32C-checked, dropped on a 401 so a rotated secret is picked up."""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from faceid_core.errors import FaceIdError
from faceid_core.secrets import FAILED_READ_KEPT_S, mxface_key_source

from devkit.fakes.mxface import unauthorized
from devkit.fakes.secret_manager import FakeSecretManager
from devkit.procs import free_port
from devkit.samples import grace_hopper_jpeg, verify_request
from tests.support.secret_breakages import cases

BODY = verify_request(grace_hopper_jpeg(), {"alice": grace_hopper_jpeg()})


@pytest.fixture(scope="module")
def sm():
    with FakeSecretManager() as server:
        yield server


@pytest.fixture
def secret(sm, fake, monkeypatch):
    """A secret of its own for each test (so a fresh engine and key cache) holding fake.key."""
    fake.reset()
    sm.delay_s = 0.0
    name = f"projects/test-project/secrets/mxface-{uuid.uuid4().hex[:12]}"
    sm.add_version(name, fake.key)
    monkeypatch.setenv("FACE_ENGINE", "mxface")
    monkeypatch.setenv("MXFACE_API_URL", fake.verify_url)
    monkeypatch.setenv("MXFACE_KEY_SECRET", f"{name}/versions/latest")
    monkeypatch.setenv("SECRET_MANAGER_EMULATOR_HOST", sm.address)
    monkeypatch.setenv("UPSTREAM_TIMEOUT_S", "3")
    monkeypatch.delenv("MXFACE_KEY", raising=False)
    return name


@pytest.fixture
def client(app, secret):
    return app.test_client()


def assert_config_error(response, *phrases: str) -> str:
    assert response.status_code == 500
    assert set(response.json) == {"error"}  # never a verdict
    error = response.json["error"]
    assert error["code"] == "config_error"
    for phrase in phrases:
        assert phrase in error["message"]
    return error["message"]


def test_key_is_read_once_and_cached(client, sm, fake, secret):
    for _ in range(3):
        assert client.post("/", json=BODY).json["verdict"] == "match"
    assert sm.access_count(f"{secret}/versions/latest") == 1
    assert [r.headers["subscriptionkey"] for r in fake.requests] == [fake.key] * 3


def test_many_threads_asking_at_once_cause_exactly_one_access(sm, secret):
    sm.delay_s = 0.3  # every caller arrives while the first read is still running
    source = mxface_key_source(None, f"{secret}/versions/latest")
    start = threading.Barrier(16)

    def ask(_: int) -> str:
        start.wait()
        return source.get(5.0)

    with ThreadPoolExecutor(16) as pool:
        keys = list(pool.map(ask, range(16)))
    assert len(set(keys)) == 1
    assert sm.access_count(f"{secret}/versions/latest") == 1


def test_concurrent_requests_read_the_secret_once(app, client, sm, secret):
    sm.delay_s = 0.3

    def call(_: int) -> int:
        return app.test_client().post("/", json=BODY).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(call, range(8))) == [200] * 8
    assert sm.access_count(f"{secret}/versions/latest") == 1


def test_a_failed_read_is_shared_by_its_waiters_and_kept_a_few_seconds(sm, secret):
    sm.deny(secret)
    sm.delay_s = 0.3
    source = mxface_key_source(None, f"{secret}/versions/latest")
    now = [1000.0]
    source.clock = lambda: now[0]
    start = threading.Barrier(8)

    def ask(_: int) -> str:
        start.wait()
        try:
            return source.get(5.0)
        except FaceIdError as exc:
            return exc.code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(ask, range(8))) == ["config_error"] * 8
    assert sm.access_count(f"{secret}/versions/latest") == 1
    sm.deny(secret, False)
    sm.delay_s = 0.0
    with pytest.raises(FaceIdError, match="permission denied"):
        source.get(5.0)  # within the window: the same failure, no read
    assert sm.access_count(f"{secret}/versions/latest") == 1
    now[0] += FAILED_READ_KEPT_S
    assert source.get(5.0)  # the window has passed: read again, and taken
    assert sm.access_count(f"{secret}/versions/latest") == 2


@pytest.mark.parametrize(
    ("breakage", "phrase"),
    cases("deleted", "denied", "disabled", "destroyed", "newest disabled", "corrupt"),
)
def test_secret_failures_are_config_errors_that_say_which(
    client, sm, fake, secret, breakage, phrase
):
    breakage(sm, secret)
    message = assert_config_error(client.post("/", json=BODY), phrase, secret)
    assert fake.key not in message
    assert fake.count() == 0  # no key, no call


def test_rotated_secret_is_picked_up_after_the_401(client, sm, fake, secret, monkeypatch):
    assert client.post("/", json=BODY).json["verdict"] == "match"
    old_key, new_key = fake.key, secrets.token_urlsafe(24)
    monkeypatch.setattr(fake, "key", new_key)  # MXFace now accepts only the rotated key
    sm.add_version(secret, new_key)
    message = assert_config_error(client.post("/", json=BODY), "MXFACE_KEY_SECRET", "401")
    assert old_key not in message and new_key not in message
    assert client.post("/", json=BODY).json["verdict"] == "match"
    assert sm.access_count(f"{secret}/versions/latest") == 2
    assert [r.headers["subscriptionkey"] for r in fake.requests] == [old_key, old_key, new_key]


def test_a_401_with_the_key_already_replaced_keeps_the_new_key(sm, secret):
    source = mxface_key_source(None, f"{secret}/versions/latest")
    current = source.get(5.0)
    source.drop("some-older-key")  # a late 401 for a key that is no longer cached
    assert source.get(5.0) == current
    assert sm.access_count(f"{secret}/versions/latest") == 1


def test_mxface_key_variable_wins_over_the_secret(client, sm, fake, secret, monkeypatch):
    monkeypatch.setenv("MXFACE_KEY", fake.key)
    assert client.post("/", json=BODY).json["verdict"] == "match"
    assert sm.access_count(f"{secret}/versions/latest") == 0


def test_401_with_a_fixed_key_is_config_error_and_no_secret_read(client, sm, fake, monkeypatch):
    monkeypatch.setenv("MXFACE_KEY", fake.key)
    fake.enqueue(unauthorized())
    before = sm.access_count()
    assert_config_error(client.post("/", json=BODY), "MXFACE_KEY")
    assert client.post("/", json=BODY).status_code == 200
    assert sm.access_count() == before


@pytest.mark.parametrize("value", ["", "  \n", "two words"])
def test_unusable_secret_value_is_config_error_without_echoing_it(client, sm, secret, value):
    sm.add_version(secret, value)
    message = assert_config_error(client.post("/", json=BODY), secret)
    assert value.strip() == "" or value not in message


def test_malformed_secret_name_is_config_error(client, monkeypatch):
    monkeypatch.setenv("MXFACE_KEY_SECRET", "mxface-key")
    assert_config_error(client.post("/", json=BODY), "projects/P/secrets/S/versions/V")


def test_unreachable_secret_manager_is_config_error_within_the_deadline(client, monkeypatch):
    monkeypatch.setenv("SECRET_MANAGER_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("UPSTREAM_TIMEOUT_S", "0.5")
    started = time.monotonic()
    assert_config_error(client.post("/", json=BODY), "unreachable")
    assert time.monotonic() - started < 2.5
