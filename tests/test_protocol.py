"""Protocol v2's rules (connector/protocol.py): the header grammar, the string to sign,
the key encoding, freshness and the replay cache; and that docs/api.md's worked example is what
the code computes, so an administrator who recomputes it by hand gets the same hex."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import pytest

from connector.app import status_of
from connector.protocol import (
    MAX_SKEW_S,
    Authenticator,
    AuthError,
    ReplayCache,
    answer_signature,
    decode_key,
    encode_key,
    new_device_key,
    parse_authorization,
    request_signature,
    string_to_sign,
)
from devkit import macro_client

API_DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"
DOC_KEY = bytes(range(32))
DOC_BODY = b'{"serial":"FOC1234X5YZ"}'
DOC_ARGS = ("POST", "/v1/verify", "FOC1234X5YZ", 1767225600, "n0nce-for-the-docs-01", DOC_BODY)


def header(key: bytes, ts: int, nonce: str = "0123456789abcdef", body: bytes = b"") -> str:
    return macro_client.authorization(key, "POST", "/v1/lock", "SIM0000", body, ts=ts, nonce=nonce)


def test_the_connector_and_the_published_client_compute_the_same_signatures():
    assert request_signature(DOC_KEY, *DOC_ARGS) == macro_client.request_signature(
        DOC_KEY, *DOC_ARGS
    )
    assert answer_signature(DOC_KEY, "abc", b"{}") == macro_client.answer_signature(
        DOC_KEY, "abc", b"{}"
    )


def test_the_worked_example_in_docs_api_md_is_what_the_code_computes():
    doc = API_DOC.read_text()
    assert encode_key(DOC_KEY) in doc
    assert string_to_sign(*DOC_ARGS).decode() in doc
    assert request_signature(DOC_KEY, *DOC_ARGS) in doc
    answer = re.search(
        r"```json\n(\{\"verdict\": \"match\"[^\n]*\"n0nce-for-the-docs-01\"[^\n]*\})\n```", doc
    )
    assert answer is not None, "the example answer body is in docs/api.md"
    assert answer_signature(DOC_KEY, DOC_ARGS[4], answer.group(1).encode()) in doc


def test_a_device_key_is_43_base64url_characters_and_round_trips():
    key = new_device_key()
    text = encode_key(key)
    assert len(text) == 43 and re.fullmatch(r"[A-Za-z0-9_-]{43}", text)
    assert decode_key(text) == key


@pytest.mark.parametrize(
    "text",
    ["", "A" * 42, "A" * 44, "A" * 42 + "=", "A" * 42 + "+", "A" * 42 + "B"],  # B: stray low bits
)
def test_anything_but_a_canonical_43_character_key_is_refused(text):
    with pytest.raises(ValueError, match="43 characters"):
        decode_key(text)


def test_the_string_to_sign_names_method_path_serial_time_nonce_and_the_body_digest():
    lines = string_to_sign("GET", "/v1/status?serial=A", "A", 5, "n" * 16, b"").decode().split("\n")
    assert lines == [
        "FACEID-V2",
        "GET",
        "/v1/status?serial=A",
        "A",
        "5",
        "n" * 16,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  # SHA-256 of b""
    ]


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "Bearer abc",
        "FaceID-HMAC-SHA256",
        "FaceID-HMAC-SHA256 serial=A,ts=1,nonce=0123456789abcdef,signature=" + "0" * 63,
        "FaceID-HMAC-SHA256 serial=A,ts=1,nonce=0123456789abcde,signature=" + "0" * 64,
        "FaceID-HMAC-SHA256 serial=A,ts=-1,nonce=0123456789abcdef,signature=" + "0" * 64,
        "FaceID-HMAC-SHA256 serial=A/B,ts=1,nonce=0123456789abcdef,signature=" + "0" * 64,
        "FaceID-HMAC-SHA256 ts=1,serial=A,nonce=0123456789abcdef,signature=" + "0" * 64,
        "FaceID-HMAC-SHA256 serial=A,ts=1,nonce=0123456789abcdef,signature=" + "0" * 64 + "\n",
        "FaceID-HMAC-SHA256  serial=A,ts=1,nonce=0123456789abcdef,signature=" + "0" * 64,
    ],
)
def test_a_header_off_the_grammar_is_unauthorized(value):
    with pytest.raises(AuthError) as caught:
        parse_authorization(value)
    assert (status_of(caught.value), caught.value.code) == (401, "unauthorized")


@pytest.fixture
def cache(store_backend):
    """The replay cache on a real store, on both databases."""
    store = store_backend.open(os.urandom(32))
    yield ReplayCache(store)
    store.close()


def _authenticator(now: float, keys: dict[str, bytes], cache: ReplayCache) -> Authenticator:
    return Authenticator(keys.get, cache, clock=lambda: now)


def test_a_good_signature_identifies_the_device_and_a_wrong_key_or_serial_does_not(cache):
    key = new_device_key()
    auth = _authenticator(1000.0, {"SIM0000": key}, cache)
    caller = auth.identify(header(key, 1000), "POST", "/v1/lock", b"")
    assert (caller.serial, caller.key) == ("SIM0000", key)
    for bad in (header(new_device_key(), 1000), header(key, 1000, body=b"x")):
        with pytest.raises(AuthError, match="wrong signature"):
            auth.identify(bad, "POST", "/v1/lock", b"")
    with pytest.raises(AuthError, match="wrong signature"):
        _authenticator(1000.0, {}, cache).identify(header(key, 1000), "POST", "/v1/lock", b"")


@pytest.mark.parametrize(
    ("offset", "code"),
    [
        (0, None),
        (MAX_SKEW_S, None),
        (MAX_SKEW_S + 1, "clock_skew"),
        (-MAX_SKEW_S - 1, "clock_skew"),
    ],
)
def test_freshness_allows_60_s_either_way(offset, code, cache):
    key = new_device_key()
    auth = _authenticator(10_000.0, {"SIM0000": key}, cache)
    caller = auth.identify(header(key, 10_000 + offset), "POST", "/v1/lock", b"")
    if code is None:
        auth.admit(caller)
    else:
        with pytest.raises(AuthError) as caught:
            auth.admit(caller)
        assert caught.value.code == code


def test_a_nonce_is_accepted_once_per_device(cache):
    cache.first_use("A", "n" * 16, 0.0)
    cache.first_use("B", "n" * 16, 0.0)  # another device may use the same nonce
    with pytest.raises(AuthError) as caught:
        cache.first_use("A", "n" * 16, 599.0)
    assert caught.value.code == "replayed"


def test_a_nonce_is_forgotten_after_ten_minutes(cache):
    cache.first_use("A", "n" * 16, 0.0)
    cache.first_use("A", "n" * 16, 601.0)


def test_of_one_request_sent_from_many_threads_exactly_one_is_first(cache):
    barrier = threading.Barrier(20)
    results: list[str] = []

    def attempt() -> None:
        barrier.wait()
        try:
            cache.first_use("A", "n" * 16, 0.0)
            results.append("first")
        except AuthError as exc:
            results.append(exc.code)

    threads = [threading.Thread(target=attempt) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["first"] + ["replayed"] * 19
