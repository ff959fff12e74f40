"""MXFace engine: REFERENCE.md §3 to the letter, with our own threshold and a shared deadline."""

from __future__ import annotations

import json
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import certifi
import urllib3
from faceid_core.errors import (
    FaceError,
    FaceIdError,
    ReferenceUnusable,
    comparison_incomplete,
    config_error,
    no_face,
    rate_limited,
    too_large,
    upstream_error,
    upstream_timeout,
)
from faceid_core.images import EncodedImage
from faceid_core.secrets import mxface_key_source
from urllib3.exceptions import ConnectTimeoutError, HTTPError, ProtocolError, ReadTimeoutError

from ..config import SCORE_TOPS, THRESHOLD_FLOORS, Settings
from .base import Comparison, Deadline, Face, Reference, in_front

MAX_ATTEMPTS = 4
BACKOFF_S = 0.2
CONNECT_TIMEOUT_S = 3.0
MAX_BODY_BYTES = 10_000_000  # MXFace's request cap; checked here to fail fast and clearly
DEFAULT_RETRY_AFTER_S = 5  # MXFace's 429 carries no Retry-After; its quota is per minute
POOL_WORKERS = 32
#: When comparisons fail in different ways, the failure reported: what the caller can act on
#: first (a smaller request, a later retry, a setting), then the service's own failures.
REPORTED_FIRST = ("too_large", "rate_limited", "config_error", "upstream_error", "upstream_timeout")


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def _load_json(content: bytes) -> Any:
    """Parse strictly: NaN/Infinity are not JSON and must never become a score."""
    return json.loads(content, parse_constant=_reject_constant)


def _finite(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _json_of_base64(fields: dict[str, str]) -> bytes:
    """The request body, written by hand: parse_image only lets strict base64 through, which
    never needs escaping, and json.dumps would scan every character of it on the hot path."""
    return ("{" + ",".join(f'"{k}":"{v}"' for k, v in fields.items()) + "}").encode("ascii")


def _error_code(body: Any) -> int | None:
    """MXFace signals errors by `code` or `errorCode` (a number or digits), even in an HTTP 200."""
    for item in body if isinstance(body, list) else [body]:
        if not isinstance(item, dict):
            continue
        for key in ("code", "errorCode"):
            value = item.get(key)
            if isinstance(value, str) and value.strip().isdigit():
                value = int(value)
            number = _finite(value)
            if number is not None and number >= 400:
                return int(number)
    return None


def _says_no_face(body: Any) -> bool:
    items = body if isinstance(body, list) else [body]
    for item in items:
        if isinstance(item, dict):
            for key in ("message", "errorMessage", "error"):
                text = item.get(key)
                text = text.lower() if isinstance(text, str) else ""
                if "no face" in text or "quality of face" in text:
                    return True
    return False


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value or "")
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _malformed(what: str) -> FaceIdError:
    return upstream_error(f"The face service sent a malformed {what}")


class MXFaceEngine:
    name = "mxface"
    score_range = (0.0, SCORE_TOPS["mxface"])
    threshold_floor = THRESHOLD_FLOORS["mxface"]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.key = mxface_key_source(settings.mxface_key, settings.mxface_key_secret)
        # urllib3 directly: requests' extra layers cost about a millisecond a call, a fifth of
        # the function's budget. No retries or redirects of its own: _post decides.
        self.http = urllib3.PoolManager(
            num_pools=4, maxsize=64, retries=False, ca_certs=certifi.where()
        )
        self.pool = ThreadPoolExecutor(max_workers=POOL_WORKERS, thread_name_prefix="mxface")

    def default_threshold(self) -> float:
        return self.settings.mxface_min_confidence

    def ready(self, deadline: Deadline) -> None:
        """Ready when the API key can be had, exactly as a comparison gets it (MXFACE_KEY, or
        MXFACE_KEY_SECRET read once and cached). MXFace itself is not asked: every call counts
        against the quota, and a key it refuses shows on the next comparison (config_error)."""
        self.key.get(deadline.require())

    # -- one HTTP exchange with retries -------------------------------------------------
    def _post(self, url: str, payload: dict[str, str], deadline: Deadline) -> Any:
        """POST with bounded retries on 429/5xx/connection errors, all inside `deadline`."""
        body = _json_of_base64(payload)
        if len(body) > MAX_BODY_BYTES:
            raise too_large(
                f"The images are too large for the face service (at most {MAX_BODY_BYTES} bytes "
                "per comparison)"
            )
        failure = upstream_error("The face service did not answer")
        for attempt in range(MAX_ATTEMPTS):
            key = self.key.get(deadline.require())
            remaining = deadline.require()
            wait: float | None = None
            try:
                response = self.http.request(
                    "POST",
                    url,
                    body=body,
                    headers={"Content-Type": "application/json", "Subscriptionkey": key},
                    timeout=urllib3.Timeout(min(CONNECT_TIMEOUT_S, remaining), remaining),
                    redirect=False,
                )
            except ReadTimeoutError:
                raise upstream_timeout("The face service did not answer in time") from None
            except (ConnectTimeoutError, ProtocolError) as exc:  # no connection, or it broke
                failure = upstream_error(f"Could not reach the face service ({type(exc).__name__})")
            except HTTPError as exc:  # TLS and the like: retrying would not help
                name = type(exc).__name__
                raise upstream_error(f"Could not call the face service ({name})") from None
            else:
                status = response.status
                if status == 429:
                    wait = _retry_after(response.headers.get("Retry-After"))
                    failure = rate_limited(
                        "The face service is rate limiting us; try again shortly",
                        DEFAULT_RETRY_AFTER_S if wait is None else max(1, math.ceil(wait)),
                    )
                elif status >= 500:
                    failure = upstream_error(f"The face service failed (HTTP {status})")
                else:
                    return self._result(status, response.data, key)
            if attempt == MAX_ATTEMPTS - 1:
                break
            delay = wait if wait is not None else BACKOFF_S * 2**attempt * (0.5 + random.random())
            if delay >= deadline.remaining() - 0.05:
                break
            time.sleep(delay)
        raise failure

    def _result(self, status: int, content: bytes, key: str) -> Any:
        """Apply the rule: only a 200 without an error code is an answer; the rest is an error."""
        if status == 401:
            self.key.drop(key)
            if self.settings.mxface_key:
                where = "MXFACE_KEY"
            else:
                where = "MXFACE_KEY_SECRET (read again on the next request)"
            raise config_error(
                f"The face service rejected the API key from {where}, or the endpoint (HTTP 401)"
            )
        if status == 413:
            raise too_large("The images are too large for the face service (HTTP 413)")
        try:
            body = _load_json(content)
        except ValueError:
            raise upstream_error(
                f"The face service sent an unreadable answer (HTTP {status})"
            ) from None
        code = _error_code(body)
        if status != 200 or code is not None:
            if _says_no_face(body):
                raise no_face()
            raise upstream_error(
                f"The face service refused the request (HTTP {status}"
                + (f", code {code})" if code else ")")
            )
        return body

    # -- the engine interface -----------------------------------------------------------
    def _compare(
        self, probe: EncodedImage, ref: Reference, threshold: float, deadline: Deadline
    ) -> Comparison:
        """One reference against the faces in front in the probe (image 2); `faces_in_probe`
        counts every face MXFace found there."""
        body = self._post(
            self.settings.mxface_api_url,
            {"encoded_image1": ref.image.b64, "encoded_image2": probe.b64},
            deadline,
        )
        faces = body.get("matchedFaces") if isinstance(body, dict) else None
        if not isinstance(faces, list):
            raise _malformed("comparison (no matchedFaces)")
        if not faces:
            raise no_face()
        entries = [_entry(face, threshold) for face in faces]
        matched, score = max((m, s) for m, s, _ in in_front(entries, lambda e: e[2]))
        return Comparison(matched, ref.id, score, len(faces))

    def verify(
        self,
        probe: EncodedImage,
        references: list[Reference],
        threshold: float,
        deadline: Deadline,
    ) -> Comparison:
        def compare(ref: Reference) -> Comparison | FaceIdError:
            try:
                return self._compare(probe, ref, threshold, deadline)
            except FaceIdError as exc:
                return exc

        if len(references) == 1:  # the usual case: no thread hand-off
            outcomes = [compare(references[0])]
        else:
            outcomes = []
            for future in [self.pool.submit(compare, ref) for ref in references]:
                try:
                    outcomes.append(future.result(timeout=max(0.0, deadline.remaining()) + 1.0))
                except TimeoutError:
                    outcomes.append(upstream_timeout("The face comparison did not finish in time"))
        results = [o for o in outcomes if isinstance(o, Comparison)]
        matches = [r for r in results if r.matched]
        if matches:
            return max(matches, key=lambda r: r.score)
        if len(results) < len(outcomes):
            # Without a match, any failed comparison could have been the match: fail closed.
            raise self._refusal(probe, references, outcomes, deadline)
        best = max(results, key=lambda r: r.score)
        return Comparison(False, None, best.score, best.faces_in_probe)

    def _refusal(
        self,
        probe: EncodedImage,
        references: list[Reference],
        outcomes: list[Comparison | FaceIdError],
        deadline: Deadline,
    ) -> FaceIdError:
        """The error for comparisons that failed: when others did compare (and did not match),
        comparison_incomplete, a failed attempt; then a failure of the service; otherwise
        only "no face" is left, which MXFace says without saying of which image. A pair that
        compared proves the probe has a face; without one, face/detect on the probe decides."""
        errors = [o for o in outcomes if isinstance(o, FaceIdError)]
        failed = [e for e in errors if not isinstance(e, FaceError)]  # not MXFace's "no face"
        if failed and len(errors) < len(outcomes):
            return comparison_incomplete(_reported(failed).code)
        if failed:
            return _reported(failed)
        if len(errors) == len(outcomes) and not self.inspect(probe, deadline):
            return no_face()
        pairs = zip(references, outcomes, strict=True)
        first = next(ref for ref, outcome in pairs if isinstance(outcome, FaceIdError))
        return ReferenceUnusable(first.id)

    def inspect(self, image: EncodedImage, deadline: Deadline) -> list[Face]:
        """Faces found by MXFace face/detect (request `{"encoded_image": b64}`).

        The detect answer's shape is not documented to us. Assumed: `{"faces": [{"faceRectangle":
        {"x", "y", "width", "height"}, "quality": float}]}`, possibly wrapped in a one-element
        array; any other shape is an upstream_error, never an empty list. MXFace's "no face"
        error becomes an empty list: the caller decides what a photo without a face means.
        """
        try:
            url = self.settings.mxface_detect_url
            body = self._post(url, {"encoded_image": image.b64}, deadline)
        except FaceError:  # MXFace's "no face" (_result)
            return []
        if isinstance(body, list):
            if len(body) != 1:
                raise _malformed("detection")
            body = body[0]
        entries = body.get("faces") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            raise _malformed("detection")
        return [_face(entry) for entry in entries]


def _reported(failed: list[FaceIdError]) -> FaceIdError:
    """The first failure in REPORTED_FIRST's order (the earliest of equals)."""

    def rank(error: FaceIdError) -> int:
        order = REPORTED_FIRST
        return order.index(error.code) if error.code in order else len(order)

    return min(failed, key=rank)


def _rectangle(value: Any, what: str) -> tuple[int, int, int, int]:
    """A faceRectangle as (x, y, width, height); anything else is a malformed `what`."""
    rect = value if isinstance(value, dict) else {}
    box = [_finite(rect.get(k)) for k in ("x", "y", "width", "height")]
    if any(v is None for v in box):
        raise _malformed(what)
    x, y, w, h = (round(v or 0.0) for v in box)
    if w <= 0 or h <= 0:
        raise _malformed(what)
    return x, y, w, h


def _entry(face: Any, threshold: float) -> tuple[bool, float, int]:
    """(matched, score, width of the probe's face) of one matchedFaces entry. The probe is
    image 2; without its face's rectangle nobody can tell who is in front: malformed."""
    if not isinstance(face, dict):
        raise _malformed("comparison")
    score = _finite(face.get("confidence"))
    result = face.get("matchResult")
    if score is None or isinstance(result, bool) or result not in (0, 1):
        raise _malformed("comparison")
    probe_face = face.get("image2_face")
    rect = probe_face.get("faceRectangle") if isinstance(probe_face, dict) else None
    width = _rectangle(rect, "comparison")[2]
    # Both must agree: MXFace's own verdict and our threshold on its score.
    return result == 1 and score >= threshold, score, width


def _face(entry: Any) -> Face:
    quality = entry.get("quality") if isinstance(entry, dict) else None
    if not isinstance(entry, dict) or (quality is not None and _finite(quality) is None):
        raise _malformed("detection")
    return Face(_rectangle(entry.get("faceRectangle"), "detection"), _finite(quality))
