"""The macro-facing HTTP API (docs/api.md §2): signed requests, input checks, signed answers.

With [admin_ui], the administrators' console (connector/console/) is a second app behind the same
socket: each request goes to the app of the listener the front marked it with, so the console's
listener reaches no API route and the macros' listener no console page."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from faceid_core.errors import FaceIdError, InputError, bad_request, internal_error, too_large
from faceid_core.logs import request_trace
from flask import Flask, Response, g, request
from werkzeug.exceptions import NotFound

from . import validation
from .codeevents import record_events
from .console import console_app
from .enrollment import audit_enrollment, enroll, enroll_event
from .front import CONSOLE_LISTENER, LISTENER_HEADER, client_address
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .protocol import ANSWER_TTL_S, SIGNATURE_HEADER, AuthError, answer_signature, unauthorized
from .runtime import Device, Runtime
from .verification import audit_fields, verify, verify_event

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

#: app.extensions key of what the server calls when the worker exits (drains the Webex queue).
SHUTDOWN = "faceid.shutdown"
#: The HTTP status of each error code this API answers (docs/api.md §2); the only place a status
#: is chosen. verify and enroll answer their failures in a 200 body, so few codes get here; one
#: missing is a bug: 500, like internal_error.
STATUS = {
    "bad_request": 400,
    "unauthorized": 401,
    "clock_skew": 401,
    "replayed": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "too_large": 413,
    "rate_limited": 429,
    "config_error": 500,
    "internal_error": 500,
    "store_unavailable": 503,
}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # ASCII only (non-ASCII as \uXXXX): the macro hashes exactly the string it receives.
    response = Response(
        json.dumps(body, ensure_ascii=True), status=status, mimetype="application/json"
    )
    response.headers.update(headers or {})
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Request-Id"] = g.get("request_id", "")
    return response


def status_of(exc: FaceIdError) -> int:
    """The HTTP status this API answers `exc` with (STATUS)."""
    return STATUS.get(exc.code, 500)


def _error(exc: FaceIdError) -> Response:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
    return _json(exc.to_json(), status_of(exc), headers)


#: The WSGI environ key of a request's reset token of `request_trace`.
TRACE_RESET = "faceid.trace_reset"


def _traced(app: Flask) -> Flask:
    """Every request of `app` gets an id, and every line logged meanwhile names it."""

    @app.before_request
    def start() -> None:
        g.request_id = uuid.uuid4().hex
        g.started = time.perf_counter()
        # Kept with the request, not in `g`: a request served inside another in the same thread
        # (a test's) shares its app context, and so its `g`.
        request.environ[TRACE_RESET] = request_trace.set(g.request_id)

    @app.teardown_request
    def end(_: BaseException | None) -> None:
        token = request.environ.pop(TRACE_RESET, None)
        if token is not None:
            request_trace.reset(token)

    return app


#: The WSGI environ key of the header the front marks the console's requests with.
LISTENER_KEY = "HTTP_" + LISTENER_HEADER.upper().replace("-", "_")


def _by_listener(macros: WSGIApplication, console: Flask | None) -> WSGIApplication:
    """Each request to the app of its listener: a console request to the console alone (404
    when there is none), every other to the macro API alone."""
    missing = NotFound()

    def dispatch(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get(LISTENER_KEY) != CONSOLE_LISTENER:
            return macros(environ, start_response)
        return (console or missing)(environ, start_response)

    return dispatch


def create_app(rt: Runtime) -> Flask:
    app = _traced(Flask("faceid-connector"))
    # One byte over: a chunked body (no Content-Length) is cut at this cap, and json_body must
    # still see that it went past the limit.
    app.config["MAX_CONTENT_LENGTH"] = rt.config.server.max_body_bytes + 1

    def source() -> str:
        return client_address(request.environ)

    def raw_body() -> bytes:
        """The exact bytes the signature covers, at most max_body_bytes (too_large beyond)."""
        limit = rt.config.server.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise too_large(f"The request body is over {limit} bytes")
        raw = request.stream.read(limit + 1)
        if len(raw) > limit:
            raise too_large(f"The request body is over {limit} bytes")
        return bytes(raw)

    def json_object(raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise bad_request("The request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object")
        return body

    def signed_path() -> str:
        """The request target as sent (path and query string), as the macro signed it."""
        environ = request.environ
        target = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        if target:
            return str(target)
        query = request.query_string.decode("latin-1")
        return request.path + (f"?{query}" if query else "")

    def authenticated(raw: bytes) -> Device:
        """The device whose key signed this request, before anything else is looked at. From the
        moment the signature holds, every answer is signed (g.caller), refusals included."""
        try:
            caller = rt.authenticator.identify(
                request.headers.get("Authorization"), request.method, signed_path(), raw
            )
        except AuthError:
            rt.auth_limiter.check(source())  # rate_limited once this address failed too often
            rt.auth_limiter.failed(source())
            rt.log("WARNING", "authentication failed", source=source())
            raise
        g.caller = caller
        try:
            rt.authenticator.admit(caller)
        except AuthError as exc:
            rt.log("WARNING", exc.message, code=exc.code, serial=caller.serial, source=source())
            raise
        device = rt.devices.get(caller.serial)  # a reload may have removed it meanwhile
        if device is None:
            raise unauthorized()
        return device

    def claimed(device: Device, serial: Any) -> None:
        """The serial a body or query names must be the one that signed."""
        if serial != device.serial:
            raise unauthorized()

    def signed_json() -> tuple[Device, dict[str, Any]]:
        raw = raw_body()
        device = authenticated(raw)
        body = json_object(raw)
        claimed(device, body.get("serial"))
        return device, body

    @app.after_request
    def sign(response: Response) -> Response:
        caller = g.get("caller")
        if caller is not None:
            body = response.get_data()
            response.headers[SIGNATURE_HEADER] = answer_signature(caller.key, caller.nonce, body)
        return response

    @app.errorhandler(FaceIdError)
    def on_face_error(exc: FaceIdError) -> Response:
        return _error(exc)

    @app.errorhandler(404)
    def on_not_found(_: Exception) -> Response:
        return _error(InputError("not_found", "Unknown path"))

    @app.errorhandler(405)
    def on_bad_method(exc: Exception) -> Response:
        response = _error(InputError("method_not_allowed", "Method not allowed on this path"))
        # RFC 9110: a 405 lists the methods the path accepts.
        response.headers["Allow"] = ", ".join(getattr(exc, "valid_methods", None) or [])
        return response

    @app.errorhandler(413)
    def on_too_large(_: Exception) -> Response:
        limit = rt.config.server.max_body_bytes
        return _error(too_large(f"The request body is over {limit} bytes"))

    @app.errorhandler(Exception)
    def on_unexpected(exc: Exception) -> Response:
        rt.log("ERROR", "request failed unexpectedly", error_type=type(exc).__name__)
        return _error(internal_error("The connector failed unexpectedly"))

    @app.post("/v1/verify")
    def verify_route() -> Response:
        device, _ = signed_json()
        outcome = verify(rt, device, g.request_id)
        answer = {
            "verdict": outcome.verdict,
            "code": outcome.code,
            "person": outcome.person,
            "message": outcome.message,
            "retry_after_s": outcome.retry_after_s,
            "serial": device.serial,
            "nonce": g.caller.nonce,
            "expires_at": int(rt.clock()) + ANSWER_TTL_S,
        }
        rt.audit(g.request_id, device.serial, "verify", **audit_fields(outcome))
        started_lockout = outcome.lockout_started
        rt.metrics.verification(
            outcome.verdict, outcome.code, outcome.stages_ms, lockout_started=started_lockout
        )
        rt.notify(verify_event(device, outcome, g.request_id))
        return _json(answer)

    @app.post("/v1/enroll")
    def enroll_route() -> Response:
        device, body = signed_json()
        person = validation.person(body.get("person"))
        outcome = enroll(rt, device, person, g.request_id)
        audit_enrollment(rt, g.request_id, device.serial, person, outcome)
        rt.metrics.enrollment(outcome.result, outcome.code)
        rt.notify(enroll_event(device, outcome, g.request_id))
        return _json(
            {
                "result": outcome.result,
                "code": outcome.code,
                "message": outcome.message,
                "person": outcome.person,
            }
        )

    @app.post("/v1/lock")
    def lock_route() -> Response:
        device, _ = signed_json()
        rt.store.end_unlocked(device.serial, now=rt.clock())
        rt.audit(g.request_id, device.serial, "lock", outcome="locked")
        return _json({"unlocked": False})

    def device_status(device: Device) -> Response:
        return _json(
            {
                "enrolled_people": rt.store.count_people(device.serial),
                "unlocked": rt.store.is_unlocked(
                    device.serial, rt.config.policy.unlock_ttl_s, now=rt.clock()
                ),
                "locked_out_for_s": rt.lockout.check(device.serial),
            }
        )

    @app.get("/v1/status")
    def status_route() -> Response:
        device = authenticated(raw_body())
        claimed(device, request.args.get("serial"))
        return device_status(device)

    @app.post("/v1/status")
    def report_route() -> Response:
        """The macro reports in when it starts, naming the push it came from (`admin
        provision` waits for its own push's report)."""
        device, body = signed_json()
        push = validation.push_id(body.get("push"))
        rt.store.record_report(device.serial, push, now=rt.clock())
        rt.audit(g.request_id, device.serial, "macro_report", outcome="running")
        return device_status(device)

    @app.post("/v1/code-events")
    def code_events_route() -> Response:
        """What the macro tells of its offline unlock codes (codeevents.py)."""
        device, body = signed_json()
        events = validation.code_events(body, rt.clock())
        recorded = record_events(rt, device, events, g.request_id)
        return _json({"recorded": recorded, "serial": device.serial})

    @app.get("/healthz")
    def healthz() -> Response:
        # Only a failing store takes the connector out of a load balancer: with the function
        # down it still gives every device a clear engine_unavailable answer.
        report = rt.health()
        return _json(report, 503 if report["status"] == "failing" else 200)

    @app.get("/metrics")
    def metrics() -> Response:
        # No authentication, like /healthz: counts and latencies by outcome only (no serial, no
        # person, no secret); block the path at the network edge if even that must stay inside.
        response = Response(rt.metrics.exposition(), content_type=METRICS_CONTENT_TYPE)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Request-Id"] = g.get("request_id", "")
        return response

    app.extensions[SHUTDOWN] = rt.close
    console = console_app(rt)
    dispatch = _by_listener(app.wsgi_app, console and _traced(console))
    app.wsgi_app = dispatch  # type: ignore[method-assign,assignment]
    return app
