"""The comparison function's client: one pooled keep-alive session, a Google ID token per call,
and a strict reading of every answer. Whatever is not a well-formed verdict becomes a connector
error code (docs/api.md §2); nothing here can turn a failure into a match.

A verify is never retried once bytes were sent (the login has a deadline); a connection refused
before sending is tried once more.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import requests
from faceid_core.contract import ID_MAX_LEN, MAX_REFERENCES, TRACE_HEADER
from faceid_core.errors import (
    ComparisonIncomplete,
    EngineError,
    FaceError,
    FaceIdError,
    InputError,
    ReferenceUnusable,
    config_error,
    engine_unavailable,
    internal_error,
)
from requests.adapters import HTTPAdapter

from .config import FunctionConfig
from .idtoken import IdTokenSource
from .transport import engine_failure, failure

Box = tuple[int, int, int, int]


class Found(NamedTuple):
    """A face the function found: its box in the image's own pixels, and how sure the detector
    is of it (0 to 1; None when the engine does not say)."""

    box: Box
    quality: float | None = None


#: The function's refusals of the picture itself, in the connector's words.
FACE_CODES = {
    "no_face": "No face was found in the picture",
    "face_too_small": "The face is too small in the picture",
    "too_dark": "The picture is too dark or the camera is covered",
}
UNREADABLE_IMAGE = "The comparison service could not read the picture"
TRACE_RE = re.compile(r"^[0-9a-f]{32}$")
CODE_RE = re.compile(r"^[a-z_]{1,40}$")
MAX_ANSWER_BYTES = 1024 * 1024
CONNECT_TIMEOUT_S = 3.0
PING_TIMEOUT_S = (2.0, 3.0)  # /healthz must answer quickly even when the function does not
DEFAULT_RETRY_AFTER_S = 10
MAX_MESSAGE_CHARS = 300  # of the function's message, quoted in ours


@dataclass(frozen=True)
class RelayResult:
    verdict: Literal["match", "no_match"]
    matched_id: str | None  # one of the ids sent, when verdict is "match"
    score: float
    threshold: float | None
    faces_in_probe: int | None
    function_ms: float | None  # the function's own elapsed_ms
    round_trip_ms: float  # the HTTP call, token excluded
    auth_ms: float  # getting the ID token (about 0 when cached)
    bytes_sent: int


def _unreadable() -> EngineError:
    return engine_unavailable("The comparison service answered something unreadable")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class FunctionClient:
    def __init__(
        self,
        config: FunctionConfig,
        pool_size: int = 16,
        *,
        token_source: IdTokenSource | None = None,
    ) -> None:
        self._config = config
        self._verify_url = config.url
        self._inspect_url = config.url.rstrip("/") + "/inspect"
        self._ready_url = config.url.rstrip("/") + "/ready"
        self._timeout = (min(CONNECT_TIMEOUT_S, config.timeout_s), config.timeout_s)
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._tokens = token_source
        if self._tokens is None and config.auth == "google-id-token":
            self._tokens = IdTokenSource(
                config.audience,
                config.credentials_file,
                impersonate=config.impersonate_service_account,
            )

    def close(self) -> None:
        self._session.close()

    def verify(
        self,
        probe_jpeg: bytes,
        references: Sequence[tuple[str, bytes]],
        trace: str | None = None,
        threshold: float | None = None,
    ) -> RelayResult:
        """Compare the probe with up to 10 (id, image) references; the ids are echoed back."""
        ids = [ref_id for ref_id, _ in references]
        if not 1 <= len(ids) <= MAX_REFERENCES or not all(1 <= len(i) <= ID_MAX_LEN for i in ids):
            raise internal_error("References must be 1 to 10 with short ids")
        body: dict[str, Any] = {
            "probe": _b64(probe_jpeg),
            "references": [{"id": ref_id, "image": _b64(image)} for ref_id, image in references],
        }
        if threshold is not None:
            body["threshold"] = threshold
        answer, round_trip_ms, auth_ms, sent = self._post(self._verify_url, body, trace)
        if not isinstance(answer, dict):
            raise _unreadable()
        verdict: Any = answer.get("verdict")
        matched: Any = answer.get("matched_id")
        score: Any = answer.get("score")
        faces: Any = answer.get("faces_in_probe")
        own_ms: Any = answer.get("elapsed_ms")
        used: Any = answer.get("threshold")
        well_formed = (
            ((verdict == "match" and matched in ids) or (verdict == "no_match" and matched is None))
            and _number(score)
            and (faces is None or (_number(faces) and faces == int(faces) >= 0))
            and (own_ms is None or _number(own_ms))
            and (used is None or _number(used))
        )
        if not well_formed:
            raise _unreadable()
        return RelayResult(
            verdict=verdict,
            matched_id=matched,
            score=float(score),
            threshold=None if used is None else float(used),
            faces_in_probe=None if faces is None else int(faces),
            function_ms=None if own_ms is None else float(own_ms),
            round_trip_ms=round_trip_ms,
            auth_ms=auth_ms,
            bytes_sent=sent,
        )

    def inspect(self, jpeg: bytes, trace: str | None = None) -> list[Found]:
        """The faces found in the image."""
        answer, *_ = self._post(self._inspect_url, {"image": _b64(jpeg)}, trace)
        faces = answer.get("faces") if isinstance(answer, dict) else None
        if not isinstance(faces, list) or len(faces) > 100:
            raise _unreadable()
        found = []
        for face in faces:
            box = face.get("box") if isinstance(face, dict) else None
            if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
                raise _unreadable()
            x, y, w, h = (round(v) for v in box)
            if x < 0 or y < 0 or w <= 0 or h <= 0:
                raise _unreadable()
            quality = face.get("quality")
            found.append(Found((x, y, w, h), float(quality) if _number(quality) else None))
        return found

    def reachable(self) -> str | None:
        """None when the function's GET /ready says it is ready: it is up, takes our credentials
        and its engine can work (its key is there); no image is sent and MXFace is not called.
        Otherwise a short reason: "failing: ..." in the function's own words when it says why."""
        headers = {}
        try:
            if self._tokens is not None:
                headers["Authorization"] = f"Bearer {self._tokens.token()}"
            with self._session.get(
                self._ready_url, headers=headers, timeout=PING_TIMEOUT_S, stream=True
            ) as response:
                raw = _read_limited(response)
        except FaceIdError as exc:
            return exc.message
        except requests.RequestException as exc:
            return engine_failure(failure(exc), "the comparison service").message
        status = response.status_code
        answer = _parsed(raw)
        report = answer if isinstance(answer, dict) else {}
        if status == 200 and report.get("status") == "ready":
            return None
        if status == 503 and report.get("status") == "failing":
            reason = _printable(report.get("reason")) or _printable(report.get("code"))
            return f"failing: {reason or 'the comparison service gave no reason'}"
        if status in (401, 403):
            return f"the comparison service refused the connector's credentials (HTTP {status})"
        if status == 404:  # a function from before /ready, or a URL that is not the function's
            return (
                "the comparison service has no GET /ready (HTTP 404): check function.url, or "
                "deploy this release's function"
            )
        return f"the comparison service answered an unexpected HTTP {status}"

    def _post(
        self, url: str, body: dict[str, Any], trace: str | None
    ) -> tuple[Any, float, float, int]:
        """(parsed answer, round trip ms, token ms, bytes sent) for a 200; an error otherwise."""
        data = json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        if trace and TRACE_RE.match(trace):
            headers[TRACE_HEADER] = f"{trace}/1;o=1"
        started = time.perf_counter()
        if self._tokens is not None:
            headers["Authorization"] = f"Bearer {self._tokens.token()}"
        auth_ms = round((time.perf_counter() - started) * 1000, 1)
        started = time.perf_counter()
        status, answer, retry_after = self._send(url, data, headers)
        round_trip_ms = round((time.perf_counter() - started) * 1000, 1)
        if status != 200:
            raise _status_error(status, answer, retry_after, body.get("threshold"))
        return answer, round_trip_ms, auth_ms, len(data)

    def _send(self, url: str, data: bytes, headers: dict[str, str]) -> tuple[int, Any, str | None]:
        for attempt in (1, 2):
            try:
                with self._session.post(
                    url, data=data, headers=headers, timeout=self._timeout, stream=True
                ) as response:
                    raw = _read_limited(response)
                    break
            except requests.RequestException as exc:
                failed = failure(exc)
                if attempt == 1 and failed.unsent:  # the comparison stores nothing: ask again
                    continue
                timeout_s = self._config.timeout_s
                raise engine_failure(failed, "The comparison service", timeout_s) from None
        return response.status_code, _parsed(raw), response.headers.get("Retry-After")


def _read_limited(response: requests.Response) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_content(64 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise _unreadable()
        chunks.append(chunk)
    return b"".join(chunks)


def _parsed(raw: bytes) -> Any:
    """The JSON in an answer, or None when it holds none."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _error_code(answer: Any) -> str | None:
    error = answer.get("error") if isinstance(answer, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) and CODE_RE.match(code) else None


def _their_message(answer: Any) -> str:
    """The function's own words for a refusal, for the operator's log: printable, bounded."""
    error = answer.get("error") if isinstance(answer, dict) else None
    return _printable(error.get("message") if isinstance(error, dict) else None)


def _printable(text: Any) -> str:
    """Text the function sent, fit for the operator's log and /healthz: printable, bounded."""
    if not isinstance(text, str):
        return ""
    return "".join(c for c in text if c.isprintable())[:MAX_MESSAGE_CHARS]


def _retry_after(value: str | None) -> int:
    try:
        seconds = int(value or "")
    except ValueError:
        return DEFAULT_RETRY_AFTER_S
    return min(max(seconds, 1), 3600)


def _status_error(
    status: int, answer: Any, retry_after: str | None, threshold: float | None = None
) -> FaceIdError:
    """The connector's error for a function answer other than 200. A refused policy.threshold
    (under the engine's floor, which only the function knows) is the connector's misconfiguration:
    config_error, fails closed and counts against no one; other 4xx are bugs: internal_error."""
    code = _error_code(answer)
    said = _their_message(answer)
    # api.md §1: the message of a refused threshold starts with 'threshold'.
    refused_threshold = (status, code) == (400, "bad_request") and said.startswith("'threshold'")
    if refused_threshold and threshold is not None:
        return config_error(
            f"The comparison service refused policy.threshold = {threshold:g}: {said}. "
            "Raise policy.threshold or leave it out to use the function's default"
        )
    if status == 422 and code == "reference_unusable":
        named = answer["error"].get("reference_id")
        return ReferenceUnusable(
            named if isinstance(named, str) else None,
            "A stored reference photo has no usable face",
        )
    if status == 422 and code in FACE_CODES:
        return FaceError(code, FACE_CODES[code])
    if status == 422 and code == "invalid_image":
        return InputError(code, UNREADABLE_IMAGE)
    if status == 429:
        return EngineError(
            "engine_busy",
            "The comparison service is rate limited",
            retry_after=_retry_after(retry_after),
        )
    if status in (401, 403):
        return engine_unavailable(
            f"The comparison service refused the connector's credentials (HTTP {status}): "
            "check the invoker role and the token audience"
        )
    if 400 <= status < 500:
        detail = (f", {code}" if code else "") + (f": {said}" if said else "")
        return internal_error(
            f"The comparison service refused the connector's request (HTTP {status}{detail})"
        )
    if code == "comparison_incomplete":
        return ComparisonIncomplete(
            "Some comparisons did not match and the others failed: not a match, and it counts"
        )
    if code == "config_error":
        return engine_unavailable("The comparison service is misconfigured")
    if status == 504 or code == "upstream_timeout":
        return engine_unavailable(f"The comparison service timed out (HTTP {status})")
    return engine_unavailable(f"The comparison service failed with HTTP {status}")
