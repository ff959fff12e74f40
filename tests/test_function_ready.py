"""The function's readiness answer, GET /ready (docs/api.md §1): 200 when a request could be
served now, 503 with the error every request would get otherwise; it never sends an image
anywhere nor calls MXFace, reads the key as a comparison does (once, then cached; a failed read
kept a few seconds), and a ready answer writes nothing at INFO or above into the log."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import pytest
from faceid_core.logs import LOGGER, set_level
from faceid_core.secrets import FAILED_READ_KEPT_S
from faceverify.config import load_settings
from faceverify.engines import get_engine
from faceverify.engines.mxface import MXFaceEngine

from devkit.fakes.secret_manager import FakeSecretManager
from devkit.samples import grace_hopper_jpeg, verify_request
from tests.support.secret_breakages import cases

BODY = verify_request(grace_hopper_jpeg(), {"alice": grace_hopper_jpeg()})
NO_KEY = "no MXFace key: set MXFACE_KEY or MXFACE_KEY_SECRET"


@pytest.fixture(scope="module")
def sm():
    with FakeSecretManager() as server:
        yield server


@pytest.fixture
def client(app, fake, monkeypatch):
    """The mxface engine with MXFACE_KEY set."""
    fake.reset()
    monkeypatch.setenv("FACE_ENGINE", "mxface")
    monkeypatch.setenv("MXFACE_API_URL", fake.verify_url)
    monkeypatch.setenv("MXFACE_KEY", fake.key)
    monkeypatch.delenv("MXFACE_KEY_SECRET", raising=False)
    return app.test_client()


@pytest.fixture
def secret(client, sm, fake, monkeypatch):
    """The key in a secret of this test's own (so a fresh engine and key cache), not in env."""
    sm.delay_s = 0.0
    name = f"projects/test-project/secrets/mxface-{uuid.uuid4().hex[:12]}"
    sm.add_version(name, fake.key)
    monkeypatch.delenv("MXFACE_KEY")
    monkeypatch.setenv("MXFACE_KEY_SECRET", f"{name}/versions/latest")
    monkeypatch.setenv("SECRET_MANAGER_EMULATOR_HOST", sm.address)
    return name


def assert_failing(response, code: str, *phrases: str) -> str:
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json
    assert set(body) == {"status", "code", "reason"}
    assert (body["status"], body["code"]) == ("failing", code)
    for phrase in phrases:
        assert phrase in body["reason"]
    return body["reason"]


def log_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]


@pytest.fixture
def debug_logged():
    """Our DEBUG lines shown (a connector test in the same process may have raised the level)."""
    ours = logging.getLogger(LOGGER)
    level = ours.level
    set_level("DEBUG")
    yield
    ours.setLevel(level)


# -- ready -----------------------------------------------------------------------------------


def test_with_its_key_set_the_function_is_ready_without_calling_mxface(client, fake):
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json == {"status": "ready", "engine": "mxface"}
    assert response.headers["Cache-Control"] == "no-store"
    assert fake.count() == 0


def test_ready_needs_no_body_and_ignores_one(client):
    assert client.get("/ready/").json["status"] == "ready"
    assert client.get("/ready?probe=1", data=b"not json").json["status"] == "ready"


def test_the_key_secret_is_read_once_for_ready_and_comparisons_alike(client, sm, fake, secret):
    for _ in range(3):
        assert client.get("/ready").status_code == 200
    assert sm.access_count(f"{secret}/versions/latest") == 1
    assert fake.count() == 0
    assert client.post("/", json=BODY).json["verdict"] == "match"
    assert sm.access_count(f"{secret}/versions/latest") == 1  # the comparison used the cached key
    assert [r.headers["subscriptionkey"] for r in fake.requests] == [fake.key]


# -- failing ---------------------------------------------------------------------------------


def test_without_a_key_the_function_is_failing_and_says_so(client, fake, monkeypatch):
    monkeypatch.delenv("MXFACE_KEY")
    assert assert_failing(client.get("/ready"), "config_error") == NO_KEY
    assert fake.count() == 0


@pytest.mark.parametrize(
    ("breakage", "phrase"),
    cases("denied", "deleted", "disabled", "corrupt", "empty"),
)
def test_an_unreadable_key_secret_is_failing_with_its_reason(
    client, sm, fake, secret, breakage, phrase
):
    breakage(sm, secret)
    reason = assert_failing(client.get("/ready"), "config_error", phrase, "MXFACE_KEY_SECRET")
    assert fake.key not in reason
    assert fake.count() == 0


def test_a_failed_read_is_kept_a_few_seconds_then_a_repaired_secret_is_ready(
    client, sm, fake, secret
):
    """However often /ready is probed, a broken secret costs one read per FAILED_READ_KEPT_S;
    comparisons meanwhile get the same failure; once that has passed a repaired one is taken."""
    now = [1000.0]
    engine = get_engine(load_settings())
    assert isinstance(engine, MXFaceEngine)
    engine.key.clock = lambda: now[0]
    version = f"{secret}/versions/latest"
    sm.deny(secret)
    for _ in range(3):
        assert_failing(client.get("/ready"), "config_error", "permission denied")
    assert client.post("/", json=BODY).json["error"]["code"] == "config_error"
    assert sm.access_count(version) == 1 and fake.count() == 0
    sm.deny(secret, False)
    now[0] += FAILED_READ_KEPT_S - 0.1
    assert_failing(client.get("/ready"), "config_error", "permission denied")
    assert sm.access_count(version) == 1
    now[0] += 0.2
    assert client.get("/ready").status_code == 200
    assert sm.access_count(version) == 2


def test_a_slow_secret_manager_is_failing_within_the_readiness_budget(
    client, sm, secret, monkeypatch
):
    """UPSTREAM_TIMEOUT_S is 10 s, but /ready answers within its own budget (2 s), before the
    connector stops waiting (3 s), so the operator reads the reason instead of a timeout."""
    monkeypatch.setenv("UPSTREAM_TIMEOUT_S", "10")
    sm.delay_s = 5.0
    started = time.monotonic()
    response = client.get("/ready")
    assert time.monotonic() - started < 4.5
    assert response.status_code == 503 and response.json["status"] == "failing"


def test_a_bad_setting_is_failing_naming_it(client, fake, monkeypatch):
    monkeypatch.setenv("UPSTREAM_TIMEOUT_S", "soon")
    assert_failing(client.get("/ready"), "config_error", "UPSTREAM_TIMEOUT_S")
    assert fake.count() == 0


def test_a_bug_in_the_check_is_failing_without_its_details(client, monkeypatch, capsys):
    def broken(self, deadline):
        raise RuntimeError("details that stay in here")

    monkeypatch.setattr(MXFaceEngine, "ready", broken)
    capsys.readouterr()
    reason = assert_failing(client.get("/ready"), "internal_error")
    assert "details" not in reason
    (line,) = log_lines(capsys)
    assert (line["severity"], line["error_type"]) == ("ERROR", "RuntimeError")
    assert "details" not in json.dumps(line)


# -- what the log says -----------------------------------------------------------------------


@pytest.mark.usefixtures("debug_logged")
def test_a_ready_answer_writes_nothing_at_info_or_above(client, sm, secret, capsys):
    capsys.readouterr()
    for _ in range(3):  # the first one reads the secret
        assert client.get("/ready").status_code == 200
    lines = log_lines(capsys)
    assert [line["severity"] for line in lines] == ["DEBUG"] * 3
    assert all((line["action"], line["status"]) == ("ready", 200) for line in lines)


def test_a_failing_answer_is_one_error_line_with_its_code(client, fake, monkeypatch, capsys):
    monkeypatch.delenv("MXFACE_KEY")
    capsys.readouterr()
    client.get("/ready")
    (line,) = log_lines(capsys)
    assert (line["severity"], line["status"], line["code"]) == ("ERROR", 503, "config_error")
    assert line["message"] == f"not ready: {NO_KEY}"
    assert line["engine"] == "mxface"


# -- routing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_on_ready_are_405_allowing_get(client, fake, method):
    response = client.open("/ready", method=method, json={})
    assert response.status_code == 405
    assert response.json["error"]["code"] == "method_not_allowed"
    assert response.headers["Allow"] == "GET"
    assert fake.count() == 0


@pytest.mark.slow
@pytest.mark.usefixtures("debug_logged")
def test_the_local_engine_is_ready_once_its_models_are_loaded(client, monkeypatch, capsys):
    monkeypatch.setenv("FACE_ENGINE", "local")
    capsys.readouterr()
    response = client.get("/ready")
    assert (response.status_code, response.json) == (200, {"status": "ready", "engine": "local"})
    assert all(line["severity"] == "DEBUG" for line in log_lines(capsys))
