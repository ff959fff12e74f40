"""The function's HTTP contract for inputs that never reach an engine."""

from __future__ import annotations

import pytest


@pytest.fixture
def client(monkeypatch):
    import functions_framework

    monkeypatch.setenv("FACE_ENGINE", "mxface")
    monkeypatch.setenv("MXFACE_KEY", "unit-test-key")
    app = functions_framework.create_app("verify_faces", "function/main.py")
    return app.test_client()


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b"{}", b'{"probe": "!!", "references": []}'],
)
def test_malformed_body_is_bad_request_not_match(client, body):
    response = client.post("/", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.json["error"]["code"] == "bad_request"
    assert "verdict" not in response.json


def test_get_is_method_not_allowed(client):
    response = client.get("/")
    assert response.status_code == 405
    assert response.json["error"]["code"] == "method_not_allowed"


def test_unknown_path_is_not_found(client):
    assert client.post("/nope", json={}).json["error"]["code"] == "not_found"
