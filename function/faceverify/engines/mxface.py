"""MXFace engine: REFERENCE.md §3 to the letter, with our own threshold and a shared deadline."""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from ..config import Settings
from ..errors import FaceIdError, config_error, no_face, upstream_error, upstream_timeout
from ..images import EncodedImage
from ..secrets import mxface_key_source
from .base import Comparison, Deadline, Face, Reference

MAX_ATTEMPTS = 4
BACKOFF_S = 0.2
MAX_REFERENCES = 10


def _retry_after(response: requests.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None


def _error_code(body: Any) -> int | None:
    """MXFace signals errors by `code` or `errorCode`, sometimes inside an HTTP 200."""
    if isinstance(body, dict):
        for key in ("code", "errorCode"):
            value = body.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and value >= 400:
                return int(value)
    return None


def _error_text(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("message", "errorMessage", "error"):
            if isinstance(body.get(key), str):
                return body[key][:200]
    return ""


def _number(value: Any, default: float | None = None) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return default


class MXFaceEngine:
    name = "mxface"
    score_range = (0.0, 100.0)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.key = mxface_key_source(settings.mxface_key, settings.mxface_key_secret)
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=64, max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.pool = ThreadPoolExecutor(max_workers=MAX_REFERENCES, thread_name_prefix="mxface")

    def default_threshold(self) -> float:
        return self.settings.mxface_min_confidence

    # -- one HTTP exchange with retries -------------------------------------------------
    def _post(self, url: str, payload: dict[str, str], deadline: Deadline) -> Any:
        """POST with bounded retries on 429/5xx/connection errors; returns the parsed success body."""
        last: FaceIdError = upstream_error("The face service did not answer")
        body = json.dumps(payload)
        for attempt in range(MAX_ATTEMPTS):
            remaining = deadline.require()
            wait: float | None = None
            try:
                response = self.session.post(
                    url,
                    data=body,
                    headers={"Content-Type": "application/json", "Subscriptionkey": self.key.get()},
                    timeout=(min(3.0, remaining), remaining),
                )
            except requests.Timeout:
                raise upstream_timeout("The face service did not answer in time") from None
            except requests.RequestException as exc:
                last = upstream_error(f"Could not reach the face service ({type(exc).__name__})")
            else:
                status = response.status_code
                if status == 401:
                    self.key.drop()
                    raise config_error("The face service rejected the API key (HTTP 401)")
                if status == 429:
                    wait = _retry_after(response)
                    last = FaceIdError(
                        429,
                        "rate_limited",
                        "The face service is busy; try again shortly",
                        retry_after=max(1, int(wait or 1)),
                    )
                elif status >= 500:
                    last = upstream_error(f"The face service failed (HTTP {status})")
                else:
                    return self._parse(response)
            if attempt == MAX_ATTEMPTS - 1:
                break
            delay = wait if wait is not None else BACKOFF_S * (2**attempt) * (0.5 + random.random())
            if delay >= deadline.remaining() - 0.05:
                break
            time.sleep(delay)
        raise last

    def _parse(self, response: requests.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            raise upstream_error(
                f"The face service sent an unreadable answer (HTTP {response.status_code})"
            ) from None
        code = _error_code(body)
        if response.status_code != 200 or code is not None:
            text = _error_text(body).lower()
            if "no face" in text or "quality of face" in text:
                raise no_face()
            raise upstream_error(
                f"The face service refused the request (HTTP {response.status_code}"
                + (f", code {code})" if code else ")")
            )
        return body

    # -- the engine interface -----------------------------------------------------------
    def _compare(self, probe: EncodedImage, ref: Reference, deadline: Deadline) -> Comparison:
        body = self._post(
            self.settings.mxface_api_url,
            {"encoded_image1": ref.image.b64, "encoded_image2": probe.b64},
            deadline,
        )
        faces = body.get("matchedFaces") if isinstance(body, dict) else None
        if not isinstance(faces, list) or not faces:
            raise no_face()
        best_score, best_match = -1.0, False
        for face in faces:
            if not isinstance(face, dict):
                raise upstream_error("The face service sent a malformed comparison")
            score = _number(face.get("confidence"))
            result = face.get("matchResult")
            if score is None or result not in (0, 1) or isinstance(result, bool):
                raise upstream_error("The face service sent a malformed comparison")
            if score > best_score:
                best_score, best_match = score, result == 1
        return Comparison(best_match, ref.id, best_score, len(faces))

    def verify(
        self,
        probe: EncodedImage,
        references: list[Reference],
        threshold: float,
        deadline: Deadline,
    ) -> Comparison:
        futures = [self.pool.submit(self._compare, probe, ref, deadline) for ref in references]
        results: list[Comparison] = []
        errors: list[FaceIdError] = []
        for future in futures:
            try:
                results.append(future.result(timeout=max(0.0, deadline.remaining()) + 1.0))
            except FaceIdError as exc:
                errors.append(exc)
            except TimeoutError:
                errors.append(upstream_timeout("The face comparison did not finish in time"))
        matches = [r for r in results if r.matched and r.score >= threshold]
        if matches:
            best = max(matches, key=lambda r: r.score)
            return Comparison(True, best.reference_id, best.score, best.faces_in_probe)
        if errors:
            # Without a match, any failed comparison could have been the match: fail closed.
            raise min(errors, key=lambda e: (e.code == "no_face", e.status))
        best = max(results, key=lambda r: r.score)
        return Comparison(False, None, best.score, best.faces_in_probe)

    def inspect(self, image: EncodedImage, deadline: Deadline) -> list[Face]:
        body = self._post(self.settings.mxface_detect_url, {"encoded_image": image.b64}, deadline)
        if isinstance(body, list):
            body = body[0] if body else {}
        entries = body.get("faces") if isinstance(body, dict) else None
        if entries is None and isinstance(body, dict):
            entries = body.get("detectedFaces", [])
        if not isinstance(entries, list):
            raise upstream_error("The face service sent a malformed detection")
        faces = []
        for entry in entries:
            rect = entry.get("faceRectangle") if isinstance(entry, dict) else None
            if not isinstance(rect, dict):
                raise upstream_error("The face service sent a malformed detection")
            box = tuple(int(_number(rect.get(k), 0) or 0) for k in ("x", "y", "width", "height"))
            faces.append(Face((box[0], box[1], box[2], box[3]), _number(entry.get("quality"))))
        return faces
