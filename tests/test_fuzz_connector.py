"""Property-based tests of the connector's input checks (docs/api.md §2): first the rules of
connector/validation.py on their own, then the real connector process (HTTPS, gunicorn) with a
simulated device. Invalid input of any shape gets a 4xx with a stable code before the device is
contacted, never a match, and no serial or name ever becomes a file.

Failing examples never show the device key: strategies choose *which* credentials to send
("right", "wrong key", ...) and the test signs the request."""

from __future__ import annotations

import json
import secrets
import string
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from faceid_core.errors import FaceIdError
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from connector import validation
from connector.app import status_of
from connector.names import visible
from connector.protocol import AuthError, parse_authorization
from devkit.connector_e2e import enroll, open_store, status, verify
from devkit.macro_client import authorization, key_text
from devkit.photos import write_frames
from devkit.procs import REPO
from devkit.stack import Stack, start_stack
from tests.support.function_bodies import json_values

DEVICE = "SIM0000"  # the serial start_stack gives its first device
ALLOWED = frozenset(string.ascii_letters + string.digits + "_-")
MAX_BODY = 65536  # server.max_body_bytes, its default
CANARY = "faceid-fuzz-canary"
#: Where a name or serial that escaped into a path would most likely land.
CANARY_PLACES = [Path("/"), Path("/tmp"), REPO, Path.home()]
#: Pieces of hostile text: traversal, absolute paths, control characters, Unicode tricks
#: (direction overrides, zero-width and line separators, lookalike slashes and letters).
NASTY = [
    "../",
    "..\\",
    "/",
    "\\",
    "..",
    f"/tmp/{CANARY}",
    f"../../../../{CANARY}",
    "C:\\Windows\\",
    "\x00",
    "\n",
    "\r\n",
    "\t",
    "\x1b[2J",
    "\x7f",
    "\x85",
    "\u2028",
    "\u202e",
    "\u200b",
    "\ufeff",
    "\u00a0",
    "%2e%2e%2f",
    "..\uff0f",
    "\u2215",
    "\u2044",
    "\uff33\uff29\uff2d",  # fullwidth SIM
    "\u0421",  # Cyrillic Es, looks like C
    "\u0663",  # Arabic-Indic digit three
    "~",
    "$HOME",
    "*",
    " ",
    CANARY,
]
SURROGATE = "\ud800"  # valid JSON ("\ud800"), not encodable text


def fuzz(examples: int) -> settings:
    """Reproducible runs: the same examples every time, nothing remembered between runs.
    `no_file_appears` is function-scoped on purpose: it checks once around all the examples."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )


# -- the documented rules (docs/api.md §2 "Validation"), written out independently -------------


def documented_serial(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 64 and set(value) <= ALLOWED


def documented_nonce(value: Any) -> bool:
    return isinstance(value, str) and 16 <= len(value) <= 64 and set(value) <= ALLOWED


def documented_person(value: Any) -> str | None:
    """The stored name: 1-64 printable characters, none of them / or \\, at least one of them
    visible (connector/names.py, tested in tests/test_names.py), surrounding spaces trimmed
    (compared in Unicode NFC form, the form names are kept in); None when refused."""
    if not isinstance(value, str):
        return None
    name = unicodedata.normalize("NFC", value).strip()
    printable = all(ch.isprintable() and ch not in "/\\" for ch in name)
    if 1 <= len(name) <= 64 and printable and visible(name):
        return name
    return None


def nasty_text(max_pieces: int = 6) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(NASTY) | st.text(max_size=4), max_size=max_pieces).map("".join)


def with_trailer(allowed: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A value made of allowed characters, then one hostile piece after it."""
    return st.tuples(allowed, st.sampled_from([*NASTY, SURROGATE])).map("".join)


def token_like(low: int, high: int) -> st.SearchStrategy[Any]:
    """Values around the serial and nonce rules: right alphabet at every length, any text,
    right alphabet with something hostile at the end, non-strings."""
    alphabet = st.text(alphabet=sorted(ALLOWED), min_size=max(0, low - 1), max_size=high + 1)
    return st.one_of(
        alphabet,
        st.text(max_size=high + 2),
        nasty_text(),
        with_trailer(st.text(alphabet=sorted(ALLOWED), min_size=low, max_size=high)),
        json_values.filter(lambda v: not isinstance(v, str)),
    )


def name_like() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.text(max_size=70),
        nasty_text(),
        st.tuples(
            st.text(" \t\n\u3000", max_size=3), st.text(max_size=66), st.text(" ", max_size=3)
        ).map("".join),
        with_trailer(st.text(string.ascii_letters + " ", min_size=1, max_size=64)),
        json_values.filter(lambda v: not isinstance(v, str)),
    )


def assert_bad_request(call: Any, value: Any) -> None:
    with pytest.raises(FaceIdError) as refused:
        call(value)
    assert (status_of(refused.value), refused.value.code) == (400, "bad_request")


@fuzz(300)
@given(value=token_like(1, 64))
@example(value="SIM0000\n")
@example(value="A" * 64)
def test_serial_rule_accepts_exactly_the_documented_alphabet_and_length(value):
    if documented_serial(value):
        assert validation.serial(value) == value
    else:
        assert_bad_request(validation.serial, value)


@fuzz(300)
@given(value=token_like(16, 64))
@example(value="a" * 16 + "\n")
@example(value="a" * 15)
def test_nonce_rule_accepts_exactly_the_documented_alphabet_and_length(value):
    text = str(value)  # a header carries text only
    header = f"FaceID-HMAC-SHA256 serial=A,ts=1,nonce={text},signature={'0' * 64}"
    if documented_nonce(text):
        assert parse_authorization(header).nonce == text
    else:
        with pytest.raises(AuthError) as refused:
            parse_authorization(header)
        assert (status_of(refused.value), refused.value.code) == (401, "unauthorized")


@fuzz(300)
@given(value=name_like())
@example(value="  Grace Hopper  ")
@example(value="\u0065\u0301" * 64)  # 128 code points, 64 characters once composed
@example(value=SURROGATE)
def test_person_rule_keeps_only_trimmed_printable_names_without_path_separators(value):
    expected = documented_person(value)
    if expected is None:
        assert_bad_request(validation.person, value)
    else:
        name = validation.person(value)
        assert name == expected
        assert "/" not in name and "\\" not in name and name.isprintable()


# -- the real connector -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    frames = write_frames(tmp_path_factory.mktemp("frames"))
    running = start_stack(
        tmp_path_factory.mktemp("stack"),
        images=frames["grace_hopper"],
        policy={"failed_auth_limit": 1_000_000},
    )
    try:
        assert running.devices[0].serial == DEVICE
        yield running
    finally:
        running.stop()


def tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


@pytest.fixture
def no_file_appears(stack):
    """Nothing new in the connector's folder, and no canary file wherever a path could lead."""
    before = tree(stack.workdir)
    yield
    after = tree(stack.workdir)
    assert after == before, after ^ before
    places = [*CANARY_PLACES, stack.workdir, stack.workdir.parent]
    assert not [p for p in places if (p / CANARY).exists()]
    assert not [name for name in after if CANARY in name]


#: What a request may carry: a right signature, one made with another key, a right one whose time
#: is an hour off, the key itself as a v1 bearer token, or nothing.
CREDENTIALS = ["right", "wrong key", "stale", "key as bearer", "none"]
#: The code each kind of wrong credentials gets, whatever the body.
REFUSED_AS = {
    "wrong key": "unauthorized",
    "stale": "clock_skew",
    "key as bearer": "unauthorized",
    "none": "unauthorized",
}


def refusal(response: requests.Response) -> tuple[int, str]:
    """Check a refusal has the error body the API documents; returns its (status, code)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["X-Request-Id"]
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return response.status_code, body["error"]["code"]


def fresh(session: requests.Session, method: str, url: str, **kwargs: Any) -> requests.Response:
    """One request on a new connection, closed after it: a kept-alive connection that the server
    closes just as it is reused would fail an example by chance (RemoteDisconnected), not for
    what it sent. (The session keeps its settings; only its pooled connections go.)"""
    try:
        return session.request(method, url, **kwargs)
    finally:
        session.close()


class Api:
    """The connector's macro API as a macro reaches it, and the device's own request count
    beside it (read twice per example, so over one kept-alive connection)."""

    def __init__(self, stack: Stack, connector: requests.Session, device: requests.Session):
        self.stack = stack
        self._connector = connector
        self._device = device

    def authorization(self, credentials: str, method: str, path: str, raw: bytes) -> dict[str, str]:
        device = self.stack.devices[0]
        if credentials == "none":
            return {}
        if credentials == "key as bearer":
            return {"Authorization": f"Bearer {key_text(device.key)}"}
        key = secrets.token_bytes(32) if credentials == "wrong key" else device.key
        ts = int(time.time()) - (3600 if credentials == "stale" else 0)
        return {"Authorization": authorization(key, method, path, DEVICE, raw, ts=ts)}

    def send(
        self,
        endpoint: str,
        body: Any,
        credentials: str = "right",
        headers: dict[str, Any] | None = None,
    ) -> requests.Response:
        """The body as JSON (NaN as Python writes it), signed as `credentials` says, then
        `headers` on top. `/v1/status` is a GET with the body's serial, when a string, in the
        query; its body is sent (and signed) but not read."""
        raw = json.dumps(body).encode()
        path, method = endpoint, "POST"
        if endpoint == "/v1/status":
            serial = body.get("serial") if isinstance(body, dict) else None
            method = "GET"
            if isinstance(serial, str):
                path += "?" + urlencode({"serial": serial})
        signed = self.authorization(credentials, method, path, raw)
        headers = {"Content-Type": "application/json", **signed, **(headers or {})}
        url = self.stack.connector_url + path
        return fresh(self._connector, method, url, data=raw, headers=headers, timeout=30)

    def device_requests(self) -> int:
        device = self.stack.devices[0]
        answer = fresh(
            self._device,
            "GET",
            f"{device.url}/_sim/stats",
            headers={"X-Sim-Control": device.control_token},
            timeout=10,
        )
        answer.raise_for_status()
        return int(answer.json()["device_requests"])

    def untouched(
        self,
        endpoint: str,
        body: Any,
        credentials: str = "right",
        headers: dict[str, Any] | None = None,
    ) -> requests.Response:
        """Send; the device must not have had a single request meanwhile."""
        before = self.device_requests()
        response = self.send(endpoint, body, credentials, headers)
        assert self.device_requests() == before, "the device was contacted"
        return response

    def refused(
        self,
        endpoint: str,
        body: Any,
        credentials: str = "right",
        headers: dict[str, Any] | None = None,
    ) -> tuple[int, str]:
        """A documented refusal, the device untouched; returns its (status, code)."""
        return refusal(self.untouched(endpoint, body, credentials, headers))


@pytest.fixture(scope="module")
def api(stack) -> Iterator[Api]:
    with requests.Session() as connector, requests.Session() as device:
        for session, ca in ((connector, str(stack.ca_path)), (device, stack.devices[0].ca_path)):
            session.trust_env = False
            session.verify = ca
        yield Api(stack, connector, device)


@pytest.mark.slow
def test_valid_calls_reach_the_device_and_a_lookalike_path_is_only_a_name(
    stack, api, no_file_appears
):
    """What the refusals below are measured against: valid calls do contact the device (its
    counter moves) and do match; a name that looks like a path (fullwidth and division slashes)
    passes the rules and is stored as a name in the store, not as a file."""
    device = stack.devices[0]
    person = f"..\uff0f..\u2215{CANARY}"
    assert documented_person(person) == person
    before = api.device_requests()
    assert enroll(stack, device, person) == {
        "result": "enrolled",
        "code": None,
        "message": f"Photo saved for {person}.",
        "person": person,
    }
    assert api.device_requests() > before
    answer = verify(stack, device)
    assert (answer["verdict"], answer["person"]) == ("match", person)
    assert status(stack, device)["enrolled_people"] == 1
    store = open_store(stack)
    try:
        assert [p.name for p in store.people(device.serial)] == [person]
    finally:
        store.close()
    lock = api.send("/v1/lock", {"serial": DEVICE})
    assert lock.json() == {"unlocked": False}


def well_formed(endpoint: str) -> dict[str, str]:
    """A body that is right in every field for this endpoint."""
    body = {"serial": DEVICE}
    if endpoint == "/v1/enroll":
        body["person"] = "Valid Name"
    return body


POSTS = ["/v1/verify", "/v1/enroll", "/v1/lock"]
ENDPOINTS = [*POSTS, "/v1/status"]
bodies = json_values | st.fixed_dictionaries(
    {},
    optional={
        "serial": st.just(DEVICE) | token_like(1, 64),
        "nonce": token_like(16, 64),  # a v1 field, read by nobody now
        "person": name_like().filter(lambda v: documented_person(v) is None),
    },
)


@pytest.mark.slow
@fuzz(200)
@given(endpoint=st.sampled_from(ENDPOINTS), body=bodies, credentials=st.sampled_from(CREDENTIALS))
@example(endpoint="/v1/verify", body=[{"serial": DEVICE}], credentials="right")
@example(endpoint="/v1/status", body={"serial": DEVICE + "\n"}, credentials="right")
def test_any_json_body_with_any_credentials_is_refused_before_the_device(
    api, no_file_appears, endpoint, body, credentials
):
    """Only a call signed by the device and naming it gets past; nothing reaches the device.
    The signature is checked before the body is read: wrong credentials are refused whatever
    the body. (`/v1/status` takes the body's serial in its query string.)"""
    if endpoint == "/v1/status" and isinstance(body, dict) and isinstance(body.get("serial"), str):
        body = {**body, "serial": body["serial"].replace(SURROGATE, "\ufffd")}  # not in a URL
    serial = body.get("serial") if isinstance(body, dict) else None
    right = credentials == "right"
    assume(not (right and serial == DEVICE and endpoint == "/v1/verify"))  # a real verify
    if right and serial == DEVICE and endpoint in ("/v1/lock", "/v1/status"):
        answer = api.untouched(endpoint, body)  # well formed: nothing else needed
        assert answer.status_code == 200 and "unlocked" in answer.json()
        return
    answer = api.refused(endpoint, body, credentials)
    if not right:
        assert answer == (401, REFUSED_AS[credentials])
    elif not isinstance(body, dict) and endpoint != "/v1/status":
        assert answer == (400, "bad_request")
    elif serial != DEVICE:
        assert answer == (401, "unauthorized")
    else:  # the device, signed by its key: what is left is a name the rules refuse
        assert answer == (400, "bad_request")


hostile_serials = st.one_of(
    with_trailer(st.just(DEVICE)),
    st.tuples(st.sampled_from(NASTY), st.just(DEVICE)).map("".join),
    nasty_text(),
    st.sampled_from(["sim0000", "\uff33\uff29\uff2d0000", "SIM\u0663\u0663\u0663\u0663"]),
).filter(lambda v: v != DEVICE)


@pytest.mark.slow
@fuzz(120)
@given(serial=hostile_serials, endpoint=st.sampled_from(ENDPOINTS))
@example(serial=DEVICE + "\n", endpoint="/v1/status")
@example(serial=f"../../{CANARY}", endpoint="/v1/enroll")
def test_serials_that_try_path_traversal_are_refused_on_every_endpoint(
    api, no_file_appears, serial, endpoint
):
    """Signed by the device, every other field right, only the body's serial is wrong: it is
    not the one that signed, whatever it holds."""
    if endpoint == "/v1/status":
        serial = serial.replace(SURROGATE, "\ufffd")  # a URL cannot carry it; the body can
    body = {**well_formed(endpoint), "serial": serial}
    assert api.refused(endpoint, body) == (401, "unauthorized")


@pytest.mark.slow
@fuzz(120)
@given(person=name_like().filter(lambda v: documented_person(v) is None))
@example(person=f"../../../../tmp/{CANARY}")
@example(person=f"/tmp/{CANARY}")
@example(person="Grace\x00Hopper")
@example(person=" \u3000 ")
def test_person_names_that_try_path_traversal_are_bad_request_before_the_device(
    api, no_file_appears, person
):
    body = {**well_formed("/v1/enroll"), "person": person}
    assert api.refused("/v1/enroll", body) == (400, "bad_request")


#: (endpoint, field) pairs where the field is read; "padding" is a field no endpoint reads.
LONG_FIELDS = [
    ("/v1/verify", "serial"),
    ("/v1/enroll", "serial"),
    ("/v1/enroll", "person"),
    ("/v1/lock", "serial"),
]
over_long = st.one_of(
    st.tuples(
        st.sampled_from(LONG_FIELDS),
        st.integers(65, 2000) | st.integers(MAX_BODY - 200, MAX_BODY + 200),
    ),
    st.tuples(
        st.sampled_from(POSTS).map(lambda endpoint: (endpoint, "padding")),
        st.integers(MAX_BODY - 40, 2 * MAX_BODY),
    ),
)


@pytest.mark.slow
@fuzz(30)
@given(where_size=over_long, char=st.sampled_from("Ae/"))
def test_over_long_values_are_too_large_or_bad_request_before_the_device(
    api, no_file_appears, where_size, char
):
    (endpoint, field), size = where_size
    body = {**well_formed(endpoint), field: char * size}
    encoded = len(json.dumps(body).encode())
    if field == "padding" and encoded <= MAX_BODY:
        body["padding"] += "A" * (MAX_BODY + 1 - encoded)  # otherwise a valid call
        encoded = MAX_BODY + 1
    answer = api.refused(endpoint, body)
    if encoded > MAX_BODY:
        assert answer == (413, "too_large")
    else:  # a serial that is not the signer's, or a name the rules refuse
        assert answer == ((401, "unauthorized") if field == "serial" else (400, "bad_request"))


header_text = st.text(
    alphabet=st.characters(
        min_codepoint=0x20, exclude_characters="\x7f", exclude_categories=["Cs"]
    ),
    max_size=80,
).map(str.lstrip)  # a value starts after the spaces that follow the colon
authorization_values = st.one_of(
    header_text,
    header_text.map(lambda s: "Bearer " + s),
    header_text.map(lambda s: "FaceID-HMAC-SHA256 " + s),
    header_text.map(lambda s: f"FaceID-HMAC-SHA256 serial={DEVICE},ts={int(time.time())}," + s),
    st.integers(257, 2000).map(lambda n: "FaceID-HMAC-SHA256 " + "A" * n),
)


@pytest.mark.slow
@fuzz(120)
@given(
    endpoint=st.sampled_from(ENDPOINTS),
    value=authorization_values,
    content_type=header_text,
)
@example(endpoint="/v1/verify", value="Bearer \xff\xfe", content_type="application/json")
def test_any_authorization_header_is_unauthorized_before_the_device(
    api, no_file_appears, endpoint, value, content_type
):
    """Every field right but the signature, sent as UTF-8 bytes whatever they are."""
    headers = {"Authorization": value.encode(), "Content-Type": content_type.encode()}
    answer = api.refused(endpoint, well_formed(endpoint), "none", headers)
    assert answer == (401, "unauthorized")


CONTROL_BYTES = [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F]


@pytest.mark.slow
@fuzz(40)
@given(
    endpoint=st.sampled_from(ENDPOINTS),
    prefix=st.binary(max_size=8).map(lambda b: b"x" + b.replace(b"\r", b"").replace(b"\n", b"")),
    control=st.sampled_from(CONTROL_BYTES).map(lambda c: bytes([c])),
    credentials=st.sampled_from(["right", "wrong key"]),
)
def test_control_characters_in_a_header_value_are_bad_request_before_the_device(
    api, no_file_appears, endpoint, prefix, control, credentials
):
    """gunicorn refuses these before the app: a 400 with its own plain page, not the JSON one."""
    body = well_formed(endpoint)
    path = f"/v1/status?serial={DEVICE}" if endpoint == "/v1/status" else endpoint
    method = "GET" if endpoint == "/v1/status" else "POST"
    signed = api.authorization(credentials, method, path, json.dumps(body).encode())
    headers = {k: v.encode() + control for k, v in signed.items()}
    headers["X-Extra"] = prefix + control
    response = api.untouched(endpoint, body, "none", headers)
    assert response.status_code == 400
    assert "verdict" not in response.text
