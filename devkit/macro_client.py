"""What the macro puts on the wire (docs/api.md §2, protocol v2), written from the document and
not with the connector's code, so that the demo, the benchmarks and the tests hold the connector
to the published protocol."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time

import requests

SIGNATURE_HEADER = "X-FaceID-Signature"
_PARAMS_RE = re.compile(r"serial=([^,]*),ts=([^,]*),nonce=([^,]*),signature=(.*)")


def key_text(key: bytes) -> str:
    """The key as SETTINGS.deviceKey holds it: base64url without padding."""
    return base64.urlsafe_b64encode(key).decode("ascii").rstrip("=")


def new_nonce() -> str:
    return secrets.token_urlsafe(18)


def body_bytes(body: object | None) -> bytes:
    """ASCII-only JSON, as the macro sends it; no body at all for None (a GET)."""
    return b"" if body is None else json.dumps(body, ensure_ascii=True).encode("ascii")


def request_signature(
    key: bytes, method: str, path: str, serial: str, ts: int, nonce: str, body: bytes
) -> str:
    digest = hashlib.sha256(body).hexdigest()
    text = f"FACEID-V2\n{method}\n{path}\n{serial}\n{ts}\n{nonce}\n{digest}"
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def authorization(
    key: bytes,
    method: str,
    path: str,
    serial: str,
    body: bytes,
    *,
    ts: int | None = None,
    nonce: str | None = None,
) -> str:
    """The Authorization header of one request (a fresh nonce and the current time by default)."""
    ts = int(time.time()) if ts is None else ts
    nonce = new_nonce() if nonce is None else nonce
    signature = request_signature(key, method, path, serial, ts, nonce, body)
    return f"FaceID-HMAC-SHA256 serial={serial},ts={ts},nonce={nonce},signature={signature}"


def send(
    base_url: str,
    path: str,
    key: bytes,
    serial: str,
    body: object | None = None,
    *,
    verify: str | bool = True,
    timeout: float = 30.0,
    ts: int | None = None,
    nonce: str | None = None,
    session: requests.Session | None = None,
) -> requests.Response:
    """One signed call as the macro makes it: POST with a JSON body, GET without one."""
    data = body_bytes(body)
    method = "GET" if body is None else "POST"
    header = authorization(key, method, path, serial, data, ts=ts, nonce=nonce)
    return (session or requests).request(
        method,
        base_url + path,
        data=data,
        headers={"Authorization": header, "Content-Type": "application/json"},
        verify=verify,
        timeout=timeout,
    )


def answer_signature(key: bytes, nonce: str, body: bytes) -> str:
    message = b"FACEID-V2-ANSWER\n" + nonce.encode("ascii") + b"\n" + body
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sent_nonce(response: requests.Response) -> str | None:
    """The nonce of the request behind `response`, read back from its Authorization header."""
    header = str(response.request.headers.get("Authorization", ""))
    match = _PARAMS_RE.search(header)
    return match.group(3) if match else None


def answer_holds(key: bytes, response: requests.Response) -> bool:
    """What the macro checks first: X-FaceID-Signature over this request's nonce and the body."""
    nonce = sent_nonce(response)
    given = response.headers.get(SIGNATURE_HEADER)
    if nonce is None or given is None:
        return False
    return hmac.compare_digest(answer_signature(key, nonce, response.content), given)
