"""The console's blueprint: the guard every request passes (a session, else the login page; a
same-origin form with its CSRF token for every POST), the security headers on every answer,
HTML error pages, sign-in and sign-out, and the overview. The other pages register their routes
from devices.py, people.py and auditlog.py.

Pages are rendered on the server and work without JavaScript; the vendored htmx (static/) only
refreshes a part of a page in place. Everything from the store is escaped by Jinja's autoescape:
no template marks store data safe."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from faceid_core.errors import FaceIdError, InputError
from flask import Blueprint, Response, g, redirect, request, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from ..front import client_address
from ..runtime import Runtime
from . import LOGIN_MAX_BYTES, auditlog, charts, devices, people
from .auth import ADMIN_NAME_MAX_LEN, ConsoleAuth
from .web import CONSOLE, Console, ago, iso, when

#: Every console answer carries these (the contract's CSP: nothing inline, nothing from elsewhere).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; connect-src 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
#: Over TLS, the browser is told to use nothing else with this host for a year (HSTS; not
#: over plain HTTP, which is allowed only on loopback, where it would be ignored anyway).
HSTS = "max-age=31536000"
#: The pages open without a session.
OPEN = frozenset({f"{CONSOLE}.login", f"{CONSOLE}.static"})
#: The HTTP status of each error code a console page answers; other codes by family.
STATUS = {
    "bad_request": 400,
    "invalid_image": 400,
    "login_failed": 403,
    "csrf_failed": 403,
    "cross_origin": 403,
    "not_found": 404,
    "too_large": 413,
    "rate_limited": 429,
    "store_unavailable": 503,
}
#: The chart's window, and how many of its verifies it reads at most.
DAY_S = 24 * 3600
CHART_ROWS = 50_000


def status_of(exc: FaceIdError) -> int:
    return STATUS.get(exc.code) or (400 if isinstance(exc, InputError) else 500)


def security_headers(response: BaseResponse, *, tls: bool) -> BaseResponse:
    response.headers.update(SECURITY_HEADERS)
    if tls:
        response.headers["Strict-Transport-Security"] = HSTS
    return response


def same_origin() -> None:
    """A POST must come from a page of this console (a login form posted from elsewhere has no
    CSRF token to check). A browser says where a request comes from in Sec-Fetch-Site; one too
    old for that sends Origin, which must then name this console. Chromium sends "Origin: null"
    from our own pages (Referrer-Policy no-referrer), but so does a sandboxed frame or a data:
    URL anywhere, so "null" passes only beside "Sec-Fetch-Site: same-origin"."""
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    if origin == "null":
        foreign = site != "same-origin"
    elif site is not None:
        foreign = site not in ("same-origin", "none")
    else:
        foreign = origin is not None and urlsplit(origin).netloc != request.host
    if foreign:
        raise InputError("cross_origin", "This form was not sent from the console's own page")


def console_blueprint(rt: Runtime, auth: ConsoleAuth) -> Blueprint:
    """Every console route, for the console's own app (connector/console/__init__.py)."""
    bp = Blueprint(
        CONSOLE,
        __name__,
        template_folder="templates",
        static_folder="static",
        static_url_path="/static",
    )
    console = Console(rt, auth)
    bp.add_app_template_filter(when)
    bp.add_app_template_filter(iso)
    bp.add_app_template_filter(ago(rt.clock), "ago")

    @bp.before_request
    def guard() -> BaseResponse | None:
        if request.method == "POST":
            same_origin()
        session = auth.session(request.cookies.get(auth.COOKIE))
        g.console_session = session
        if request.endpoint in OPEN:
            return None
        if session is None:
            return redirect(url_for(".login"), 303)
        if request.method == "POST":
            auth.check_csrf(session, request.form.get("csrf"))
        return None

    @bp.after_app_request
    def headers(response: BaseResponse) -> BaseResponse:
        ui = rt.config.admin_ui
        return security_headers(response, tls=ui is not None and ui.tls_cert is not None)

    def page(
        template: str, status: int, retry_after: int | None = None, **context: Any
    ) -> Response:
        """A page answered with an error status (and when trying again makes sense)."""
        response = Response(console.render(template, **context), status, mimetype="text/html")
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        return response

    @bp.app_errorhandler(FaceIdError)
    def on_face_error(exc: FaceIdError) -> Response:
        status = status_of(exc)
        return page("error.html", status, exc.retry_after, title="Refused", message=exc.message)

    @bp.app_errorhandler(HTTPException)
    def on_http_error(exc: HTTPException) -> BaseResponse | HTTPException:
        if exc.code is None or exc.code < 400:
            return exc
        return page("error.html", exc.code, title=exc.name, message=exc.description or exc.name)

    @bp.app_errorhandler(Exception)
    def on_unexpected(exc: Exception) -> Response:
        rt.log("ERROR", "console request failed unexpectedly", error_type=type(exc).__name__)
        message = "The console failed unexpectedly; the log says why."
        return page("error.html", 500, title="Failed", message=message)

    @bp.route("/login", methods=["GET", "POST"])
    def login() -> BaseResponse | str:
        if request.method == "GET":
            if g.console_session is not None:
                return redirect(url_for(".overview"), 303)
            return console.render("login.html", name="", refusal=None)
        # Read before anyone is signed in: a body of unknown length or over the limit, unread.
        if request.content_length is None or request.content_length > LOGIN_MAX_BYTES:
            raise InputError("too_large", f"A sign-in form is {LOGIN_MAX_BYTES} bytes at most")
        name = request.form.get("name", "")
        try:
            session = auth.login(
                name,
                request.form.get("password", ""),
                client_address(request.environ),
                replacing=request.cookies.get(auth.COOKIE),
            )
        except FaceIdError as exc:
            status = status_of(exc)
            shown = name[: 4 * ADMIN_NAME_MAX_LEN]  # typed back, bounded
            return page("login.html", status, exc.retry_after, name=shown, refusal=exc.message)
        signed_in = redirect(url_for(".overview"), 303)
        signed_in.set_cookie(auth.COOKIE, session.token, **auth.cookie_options())
        return signed_in

    @bp.post("/logout")
    def logout() -> BaseResponse:
        auth.logout(console.session().token)
        response = redirect(url_for(".login"), 303)
        response.delete_cookie(auth.COOKIE, **auth.cookie_options())
        return response

    @bp.get("/")
    def overview() -> str:
        now = rt.clock()
        verifies = rt.store.audit_page(action="verify", since=now - DAY_S, limit=CHART_ROWS)
        enrolled = {serial: rt.store.count_people(serial) for serial in rt.devices}
        locked = [serial for serial in rt.devices if rt.lockout.check(serial)]
        return console.render(
            "overview.html",
            verifies=charts.verifies_per_hour(verifies, now),
            latency=charts.latency_per_hour(verifies, now),
            truncated=len(verifies) >= CHART_ROWS,
            devices=len(rt.devices),
            people=sum(enrolled.values()),
            locked=locked,
            accuracy=charts.ACCURACY,
        )

    devices.register(bp, console)
    people.register(bp, console)
    auditlog.register(bp, console)
    return bp
