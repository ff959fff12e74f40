"""The HTTP contract (docs/api.md): routing, input checks, error mapping and one log line a call;
a ready answer's line is DEBUG, as the connector's health check asks every 30 s."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import flask
from faceid_core.contract import ID_MAX_LEN, MAX_REFERENCES, TRACE_HEADER
from faceid_core.errors import FaceIdError, InputError, bad_request, internal_error, too_large
from faceid_core.images import EncodedImage, check_pixels, parse_image
from faceid_core.logs import log, trace_id, traced

from .config import Settings, load_settings, under_floor
from .engines import Comparison, Deadline, Engine, Reference, get_engine

#: The HTTP status of each error code this function answers (docs/api.md §1, the errors table);
#: the only place a status is chosen. A code missing here is a bug: 500, like internal_error.
STATUS = {
    "bad_request": 400,
    "not_found": 404,
    "method_not_allowed": 405,
    "too_large": 413,
    "invalid_image": 422,
    "no_face": 422,
    "reference_unusable": 422,
    "face_too_small": 422,
    "too_dark": 422,
    "rate_limited": 429,
    "config_error": 500,
    "internal_error": 500,
    "upstream_error": 502,
    "comparison_incomplete": 502,
    "upstream_timeout": 504,
}
# "/ready", not "/healthz": Cloud Run reserves some paths ending in "z" (its known issues page),
# which then never reach the function.
ROUTES = {"/": "verify", "/verify": "verify", "/inspect": "inspect", "/ready": "ready"}
#: The one method each action takes (the 405's Allow header).
METHODS = {"verify": "POST", "inspect": "POST", "ready": "GET"}
#: The readiness check's budget (reading a secret at most): under the connector's 3 s wait for
#: the answer (connector/relay.py PING_TIMEOUT_S), so a slow read still comes back with its reason.
READY_BUDGET_S = 2.0
READ_CHUNK = 256 * 1024
_checks = ThreadPoolExecutor(max_workers=8, thread_name_prefix="pixels")


def _json_response(body: Any, status: int, headers: dict[str, str] | None = None) -> flask.Response:
    response = flask.Response(
        json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json"
    )
    for name, value in (headers or {}).items():
        response.headers[name] = value
    response.headers["Cache-Control"] = "no-store"
    return response


def status_of(error: FaceIdError) -> int:
    """The HTTP status this function answers `error` with (STATUS)."""
    return STATUS.get(error.code, 500)


def error_response(error: FaceIdError, allow: str = "POST") -> flask.Response:
    """The JSON error body with its status, and the headers that status calls for (`allow`: the
    method of the path, for a 405)."""
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    if error.code == "method_not_allowed":
        headers["Allow"] = allow
    return _json_response(error.to_json(), status_of(error), headers)


def _discard(stream: Any) -> None:
    """Read what is left of a refused body without keeping it: the framework reads the rest of
    every request after the answer, and would otherwise buffer a huge body in memory."""
    while stream.read(READ_CHUNK):
        pass


def read_json_body(request: flask.Request, limit: int) -> dict[str, Any]:
    """Read at most `limit` bytes (too_large beyond, with or without Content-Length) and parse one
    JSON object (bad_request otherwise)."""
    stream = request.stream
    length = request.content_length
    chunks: list[bytes] = []
    size = 0 if length is None or length <= limit else length
    while size <= limit:
        chunk = stream.read(min(READ_CHUNK, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        _discard(stream)
        raise too_large(f"The request body is over {limit} bytes")
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad_request("The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object")
    return body


def _threshold(body: dict[str, Any], engine: Engine) -> float:
    value = body.get("threshold")
    if value is None:
        return engine.default_threshold()
    low, high = engine.score_range
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request("'threshold' must be a number")
    # json.loads takes NaN and Infinity; compare ints as ints (a huge one overflows a float).
    if isinstance(value, float) and not math.isfinite(value):
        raise bad_request("'threshold' must be a finite number")
    if not low <= value <= high:
        raise bad_request(f"'threshold' must be between {low:g} and {high:g} for this engine")
    if value < engine.threshold_floor:  # 0 would accept anyone at all
        raise bad_request(under_floor("'threshold'", engine.name))
    return float(value)


def _references(body: dict[str, Any], settings: Settings) -> list[Reference]:
    refs = body.get("references")
    if not isinstance(refs, list) or not 1 <= len(refs) <= MAX_REFERENCES:
        raise bad_request(f"'references' must be a list of 1 to {MAX_REFERENCES} items")
    parsed = []
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict):
            raise bad_request(f"references[{i}] must be an object with 'id' and 'image'")
        ref_id = ref.get("id")
        if not isinstance(ref_id, str) or not 1 <= len(ref_id) <= ID_MAX_LEN:
            raise bad_request(f"references[{i}].id must be a string of 1 to {ID_MAX_LEN} chars")
        image = parse_image(
            ref.get("image"), f"references[{i}].image", settings.max_image_pixels, remember=True
        )
        parsed.append(Reference(ref_id, image))
    return parsed


def _elapsed_ms(started: float) -> float:
    """Milliseconds since `started` (a perf_counter reading), as every log line gives them."""
    return round((time.perf_counter() - started) * 1000, 1)


@contextmanager
def _engine_time(fields: dict[str, Any]) -> Iterator[None]:
    """Log how long the engine took, so `elapsed_ms - engine_ms` is what this layer adds."""
    started = time.perf_counter()
    try:
        yield
    finally:
        fields["engine_ms"] = _elapsed_ms(started)


def _verify(
    body: dict[str, Any], settings: Settings, engine: Engine, fields: dict[str, Any]
) -> dict[str, Any]:
    max_pixels = settings.max_image_pixels
    probe: EncodedImage = parse_image(body.get("probe"), "probe", max_pixels, pixels=False)
    references = _references(body, settings)
    threshold = _threshold(body, engine)
    # The probe is new every time: prove its pixels decode while the engine is at work (the
    # decoder releases the GIL) instead of before. Its verdict wins over the engine's.
    pixels = _checks.submit(check_pixels, probe, "probe", max_pixels)
    try:
        with _engine_time(fields):
            result: Comparison = engine.verify(
                probe, references, threshold, Deadline(settings.upstream_timeout_s)
            )
    except FaceIdError:
        pixels.result()
        raise
    pixels.result()
    matched = result.matched and result.score >= threshold
    return {
        "verdict": "match" if matched else "no_match",
        "matched_id": result.reference_id if matched else None,
        "score": round(result.score, 4),
        "threshold": threshold,
        "engine": engine.name,
        "faces_in_probe": result.faces_in_probe,
    }


def _inspect(
    body: dict[str, Any], settings: Settings, engine: Engine, fields: dict[str, Any]
) -> dict[str, Any]:
    image = parse_image(body.get("image"), "image", settings.max_image_pixels)
    with _engine_time(fields):
        faces = engine.inspect(image, Deadline(settings.upstream_timeout_s))
    return {
        "faces": [{"box": list(f.box), "quality": f.quality} for f in faces],
        "engine": engine.name,
    }


def _ready(started: float, fields: dict[str, Any]) -> flask.Response:
    """200 when a request could be served now: the settings load, the engine is built and says
    it is ready (no image, no call to MXFace); else 503 with the error any request would get."""
    problem: FaceIdError
    try:
        settings = load_settings()
        fields["engine"] = settings.engine
        engine = get_engine(settings)
        engine.ready(Deadline(min(settings.upstream_timeout_s, READY_BUDGET_S)))
    except FaceIdError as error:
        problem = error
    except Exception as exc:  # a bug: not ready either, and named only by its type
        fields["error_type"] = type(exc).__name__
        problem = internal_error("The readiness check failed unexpectedly")
    else:
        log("DEBUG", "ready", status=200, elapsed_ms=_elapsed_ms(started), **fields)
        return _json_response({"status": "ready", "engine": engine.name}, 200)
    log(
        "ERROR",
        f"not ready: {problem.message}",
        status=503,
        code=problem.code,
        elapsed_ms=_elapsed_ms(started),
        **fields,
    )
    body = {"status": "failing", "code": problem.code, "reason": problem.message}
    return _json_response(body, 503)


def handle(request: flask.Request) -> flask.Response:
    """Answer one request; every failure becomes a JSON error, never a traceback or a match.
    Every line logged meanwhile carries the caller's trace (X-Cloud-Trace-Context)."""
    with traced(trace_id(request.headers.get(TRACE_HEADER))):
        return _handle(request)


def _handle(request: flask.Request) -> flask.Response:
    started = time.perf_counter()
    action = ROUTES.get(request.path.rstrip("/") or "/")
    fields: dict[str, Any] = {"action": action, "path": request.path[:100]}
    try:
        if action is None:
            raise InputError("not_found", "Unknown path; use POST /, POST /inspect or GET /ready")
        if request.method != METHODS[action]:
            use = "Use GET" if action == "ready" else "Use POST with a JSON body"
            raise InputError("method_not_allowed", use)
        if action == "ready":
            return _ready(started, fields)
        settings = load_settings()
        fields["engine"] = settings.engine
        body = read_json_body(request, settings.max_request_bytes)
        engine = get_engine(settings)
        answer = (_verify if action == "verify" else _inspect)(body, settings, engine, fields)
        elapsed = _elapsed_ms(started)
        if action == "verify":
            answer["elapsed_ms"] = elapsed
            fields.update(verdict=answer["verdict"], score=answer["score"])
        else:
            fields["faces"] = len(answer["faces"])
        log("INFO", f"{action} done", status=200, elapsed_ms=elapsed, **fields)
        return _json_response(answer, 200)
    except FaceIdError as error:
        _log_refusal(error, action, started, fields)
        return error_response(error, METHODS.get(action or "", "POST"))
    except Exception as exc:  # a bug must still fail closed, without leaking details
        log("ERROR", "unexpected failure", error_type=type(exc).__name__, **fields)
        return error_response(internal_error("The face service failed unexpectedly"))


def _log_refusal(error: FaceIdError, action: str | None, started: float, fields: dict) -> None:
    """One line per refused request: an ERROR when the fault is ours or upstream (5xx)."""
    status = status_of(error)
    log(
        "ERROR" if status >= 500 else "WARNING",
        f"{action or 'request'} refused: {error.message}",
        status=status,
        code=error.code,
        verdict="error",
        elapsed_ms=_elapsed_ms(started),
        **error.details,
        **fields,
    )


def start_or_refuse() -> None:
    """Start-up's check: bad settings, or local models missing or not the published files, are
    logged (Cloud Run keeps stdout) and end the process with a non-zero status and the same
    message on stderr, before any server comes up. The engine built here serves every request."""
    try:
        get_engine(load_settings())
    except FaceIdError as error:
        log("CRITICAL", f"refusing to start: {error.message}", code=error.code)
        raise SystemExit(f"faceverify: refusing to start: {error.message}") from None
