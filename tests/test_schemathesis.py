"""Both APIs against their OpenAPI documents (docs/openapi.yaml, docs/openapi-function.yaml):
schemathesis generates requests from the documents (their examples, boundary values, valid and
invalid bodies, unlisted methods) and sends them to live processes. Every answer must be
documented — status, headers, body schema — and none may be a 5xx. Examples are derandomized,
so a run is reproducible."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, settings

from devkit.fakes.mxface import FakeMXFace, match, no_match
from devkit.macro_client import authorization
from devkit.photos import write_frames
from devkit.procs import REPO, ServerProcess, start_function
from devkit.stack import SimDevice, Stack, start_stack

FUNCTION_DOC = REPO / "docs" / "openapi-function.yaml"
CONNECTOR_DOC = REPO / "docs" / "openapi.yaml"
SERIAL = "SIM0000"  # the first device devkit.stack starts


def _config(accepted: list[str]) -> schemathesis.Config:
    """`accepted`: what a schema-valid request may get; anything schema-invalid must be a 4xx."""
    return schemathesis.Config.from_dict(
        {
            "checks": {
                "positive_data_acceptance": {"expected-statuses": accepted},
                "negative_data_rejection": {"expected-statuses": ["400", "401", "413", "422"]},
            },
        }
    )


# A well-formed body can still hold base64 that is no image (422); never a 400.
function_api = schemathesis.openapi.from_path(FUNCTION_DOC, config=_config(["200", "422"]))
# Valid requests are aimed at the stack's device (_aim_at_device): always a 200.
connector_api = schemathesis.openapi.from_path(CONNECTOR_DOC, config=_config(["200"]))

bounded = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def mxface() -> Iterator[FakeMXFace]:
    with FakeMXFace() as fake:
        yield fake


def _function_env(fake: FakeMXFace) -> dict[str, str]:
    return {"FACE_ENGINE": "mxface", "MXFACE_API_URL": fake.verify_url, "MXFACE_KEY": fake.key}


@pytest.fixture(scope="module")
def function(mxface) -> Iterator[ServerProcess]:
    with start_function("verify_faces", "function/main.py", env=_function_env(mxface)) as proc:
        yield proc


@pytest.fixture(scope="module")
def stack(mxface, tmp_path_factory) -> Iterator[Stack]:
    """The connector, its device simulator and a function whose MXFace matches every other
    comparison: verify sees both verdicts, and enrollment happens in unlocked sessions too."""
    verdicts = itertools.cycle([match(), no_match()])
    mxface.verify_rule = lambda _a, _b: next(verdicts)
    workdir: Path = tmp_path_factory.mktemp("stack")
    frames = write_frames(workdir / "frames")
    # The brake on failed authentication (per address) would answer 429 to most of a run
    # whose serials and tokens are mostly wrong; its own tests are in test_connector_api.py.
    started = start_stack(
        workdir,
        images=frames["grace_hopper"],
        devices=1,
        function_env=_function_env(mxface),
        policy={"failed_auth_limit": 1_000_000},
    )
    try:
        assert started.devices[0].serial == SERIAL
        yield started
    finally:
        started.stop()


def test_both_documents_are_valid_openapi():
    function_api.validate()
    connector_api.validate()


def _on_mxface_scale(case: Any) -> None:
    """The document allows each engine's thresholds (`local` 0.363-1, `mxface` 60-100); this
    function runs mxface, for which a valid local one is under the floor (400): move it onto
    the mxface scale. Invalid requests keep theirs, and must be refused."""
    threshold = case.body.get("threshold") if isinstance(case.body, dict) else None
    if isinstance(threshold, int | float) and not isinstance(threshold, bool) and threshold <= 1:
        case.body["threshold"] = 60 + (threshold - 0.363) / 0.637 * 40


@pytest.mark.slow
@function_api.parametrize()
@bounded
def test_every_function_answer_is_documented(case, function):
    if case.meta.generation.mode.is_positive:
        _on_mxface_scale(case)
    case.call_and_validate(base_url=function.url, timeout=30)


def _aim_at_device(case: Any) -> None:
    """Valid requests name the real device, so they get past authentication (a generated serial
    names no device: 401, which the invalid requests still meet)."""
    if isinstance(case.body, dict) and "serial" in case.body:
        case.body["serial"] = SERIAL
    # An unlock-code event happened by the device's clock: no later than a day from now (a rule
    # of time the document cannot state).
    for event in case.body.get("events", []) if isinstance(case.body, dict) else []:
        if isinstance(event, dict) and "at" in event:
            event["at"] = min(event["at"], int(time.time()))
    if isinstance(case.query, dict) and "serial" in case.query:
        case.query["serial"] = SERIAL


class _SignAsTheMacro(requests.auth.AuthBase):
    """Replaces the Authorization value schemathesis generated with the macro's signature over
    the exact path and body sent (protocol v2); a request it sent without one stays without."""

    def __init__(self, device: SimDevice) -> None:
        self.device = device

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if "Authorization" not in request.headers:
            return request
        body = request.body or b""
        data = body.encode() if isinstance(body, str) else bytes(body)
        path = urlsplit(request.url or "")
        target = path.path + (f"?{path.query}" if path.query else "")
        request.headers["Authorization"] = authorization(
            self.device.key, request.method or "GET", target, self.device.serial, data
        )
        return request


@pytest.mark.slow
@connector_api.parametrize()
@bounded
def test_every_connector_answer_is_documented(case, stack):
    if case.meta.generation.mode.is_positive:
        _aim_at_device(case)
    case.call_and_validate(
        base_url=stack.connector_url,
        auth=_SignAsTheMacro(stack.devices[0]),
        verify=str(stack.ca_path),
        timeout=30,
    )


# -- what no operation lists: other paths and methods ---------------------------------------------


def _documented(doc: Path, response: str, answer: requests.Response) -> None:
    """`answer` is the document's components/responses/`response`: body schema, headers."""
    import jsonschema_rs

    spec = yaml.safe_load(doc.read_text())
    described = spec["components"]["responses"][response]
    schema = described["content"]["application/json"]["schema"]
    validator = jsonschema_rs.validator_for({**schema, "components": spec["components"]})
    validator.validate(answer.json())
    for name, header in described["headers"].items():
        if "$ref" in header:
            header = spec["components"]["headers"][header["$ref"].rsplit("/", 1)[1]]
        jsonschema_rs.validator_for(header["schema"]).validate(answer.headers[name])


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/v2/verify", "/nothing", "/v1/verify/x"])
def test_an_unknown_connector_path_is_the_documented_404(stack, path):
    answer = requests.post(
        stack.connector_url + path, json={}, verify=str(stack.ca_path), timeout=10
    )
    assert answer.status_code == 404
    _documented(CONNECTOR_DOC, "NotFound", answer)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/verify"), ("DELETE", "/v1/enroll"), ("PUT", "/v1/lock"), ("POST", "/healthz")],
)
def test_an_unlisted_connector_method_is_the_documented_405(stack, method, path):
    answer = requests.request(
        method, stack.connector_url + path, verify=str(stack.ca_path), timeout=10
    )
    assert answer.status_code == 405
    _documented(CONNECTOR_DOC, "MethodNotAllowed", answer)
    listed = set(yaml.safe_load(CONNECTOR_DOC.read_text())["paths"][path])
    assert {m.strip().lower() for m in answer.headers["Allow"].split(",")} >= listed


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/nope", "/inspect/more", "/v1/verify"])
def test_an_unknown_function_path_is_the_documented_404(function, path):
    answer = requests.post(function.url + path, json={}, timeout=10)
    assert answer.status_code == 404
    _documented(FUNCTION_DOC, "NotFound", answer)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_an_unlisted_function_method_is_the_documented_405(function, method):
    answer = requests.request(method, function.url + "/inspect", timeout=10)
    assert answer.status_code == 405
    _documented(FUNCTION_DOC, "MethodNotAllowed", answer)
