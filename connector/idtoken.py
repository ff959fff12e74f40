"""Google ID tokens for calling the private comparison function: fetched once, shared by every
thread, refreshed (by one thread) five minutes before they expire.

Credentials come from a service-account key file, or else application default credentials
(GOOGLE_APPLICATION_CREDENTIALS, then the metadata server when running on Google Cloud).

With `impersonate` (Workload Identity Federation: no key), those credentials may be any file
google-auth loads, typically an `external_account` configuration; they ask the IAM Credentials API
(`generateIdToken`) for the named account's ID tokens. IAM_CREDENTIALS_EMULATOR_HOST=host:port
(loopback only, for tests) sends that call to a local server over plain HTTP.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import google.auth
import google.auth.transport.requests
from faceid_core.errors import FaceIdError, config_error, engine_unavailable
from faceid_core.logs import log
from google.auth import exceptions, impersonated_credentials, jwt

from .transport import engine_failure, failure

REFRESH_MARGIN_S = 300.0
TOKEN_HTTP_TIMEOUT_S = 10.0
RETRY_REFRESH_AFTER_S = 30.0
MIN_VALIDITY_S = 30.0  # a token closer than this to expiry may lapse in flight
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
IAM_EMULATOR_ENV = "IAM_CREDENTIALS_EMULATOR_HOST"
IAM_EMULATOR_RE = re.compile(r"^(?:127\.0\.0\.1|localhost|\[::1\]):[0-9]{1,5}$")
IAM_ACCOUNTS_PATH = "/v1/projects/-/serviceAccounts/"
CODE_RE = re.compile(r"^[A-Za-z_]{1,40}$")


class _BoundedRequest(google.auth.transport.requests.Request):
    """google-auth's transport waits up to 120 s by default; a login cannot."""

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                 timeout: float | None = None, **kwargs: Any) -> Any:  # fmt: skip
        limit = TOKEN_HTTP_TIMEOUT_S if timeout is None else min(timeout, TOKEN_HTTP_TIMEOUT_S)
        return super().__call__(url, method, body, headers, timeout=limit, **kwargs)


def _expiry_seconds(credentials: Any) -> float:
    expiry = credentials.expiry
    if isinstance(expiry, datetime):
        return (expiry if expiry.tzinfo else expiry.replace(tzinfo=UTC)).timestamp()
    return float(jwt.decode(credentials.token, verify=False)["exp"])


def _iam_base_url(universe_domain: str) -> str:
    """Google's IAM Credentials API, or the local server named by IAM_CREDENTIALS_EMULATOR_HOST:
    only a loopback address, as the call carries an access token over plain HTTP."""
    emulator = os.environ.get(IAM_EMULATOR_ENV, "").strip()
    if not emulator:
        return f"https://iamcredentials.{universe_domain}"
    if not IAM_EMULATOR_RE.match(emulator):
        raise config_error(f"{IAM_EMULATOR_ENV} must be 127.0.0.1:PORT or localhost:PORT (tests)")
    return f"http://{emulator}"


def _error_word(text: str, *path: str) -> str:
    """The code word at `path` in a JSON error body, or "": a message may name it without
    echoing anything else the body holds."""
    try:
        value: Any = json.loads(text)
        for key in path:
            value = value[key]
    except (ValueError, KeyError, TypeError, IndexError):
        return ""
    return value if isinstance(value, str) and CODE_RE.match(value) else ""


class _IamIdTokens(impersonated_credentials.IDTokenCredentials):
    """google-auth's IDTokenCredentials with include_email, whose refresh sends the same
    generateIdToken request through the connector's bounded transport: google-auth's own refresh
    waits up to 120 s on a session of its own, cannot be pointed at a local server, and reports
    every failure alike. This one names the step that failed, without any token."""

    def __init__(self, target: impersonated_credentials.Credentials, audience: str) -> None:
        super().__init__(target, target_audience=audience, include_email=True)
        self._account = target.signer_email
        base = _iam_base_url(target.universe_domain)
        self._iam_url = f"{base}{IAM_ACCOUNTS_PATH}{self._account}:generateIdToken"

    def refresh(self, request: Any) -> None:
        response = self._generate(request, renew=False)
        if response.status == 401:  # refused before its expiry (revoked?): renew it, once
            response = self._generate(request, renew=True)
        self._read(response)

    def _generate(self, request: Any, renew: bool) -> Any:
        # The source credentials as google-auth scoped them for IAM when building the target.
        source = self._target_credentials._source_credentials
        headers = {"Content-Type": "application/json"}
        try:
            if renew:
                source.refresh(request)
            source.before_request(request, "POST", self._iam_url, headers)
        except exceptions.OAuthError as exc:
            body = exc.args[1] if len(exc.args) > 1 else ""  # OAuthError(details, body)
            detail = _error_word(body, "error") or "refused"
            raise engine_unavailable(
                f"Google's Security Token Service refused the connector's credentials ({detail})"
            ) from None
        except exceptions.GoogleAuthError as exc:
            raise engine_unavailable(
                "the connector's credentials could not get a Google access token "
                f"({type(exc).__name__})"
            ) from None
        body = {
            "audience": self._target_audience,
            "delegates": self._target_credentials._delegates,
            "includeEmail": self._include_email,
        }
        try:
            return request(
                url=self._iam_url, method="POST", headers=headers, body=json.dumps(body).encode()
            )
        except exceptions.TransportError as exc:  # requests' failure, wrapped by google-auth
            raise engine_failure(failure(exc), "the IAM Credentials API") from None

    def _read(self, response: Any) -> None:
        text = response.data.decode("utf-8", "replace")
        if response.status != 200:
            reason = _error_word(text, "error", "status")
            status = f"HTTP {response.status} {reason}".strip()
            hint = (
                ": the connector's credentials need roles/iam.serviceAccountOpenIdTokenCreator "
                "on it"
                if response.status == 403
                else ""
            )
            raise engine_unavailable(
                f"IAM refused to mint an ID token for {self._account} ({status}){hint}"
            )
        try:
            token = json.loads(text)["token"]
            exp = float(jwt.decode(token, verify=False)["exp"])
        except Exception:
            raise engine_unavailable("IAM answered without a usable ID token") from None
        self.token, self.expiry = token, datetime.fromtimestamp(exp, UTC).replace(tzinfo=None)


class IdTokenSource:
    def __init__(
        self,
        audience: str,
        credentials_file: str | None = None,
        *,
        impersonate: str | None = None,
        clock: Callable[[], float] = time.time,
        refresh_margin_s: float = REFRESH_MARGIN_S,
    ) -> None:
        self.audience = audience
        self.impersonate = impersonate
        self._clock = clock
        self._margin = refresh_margin_s
        self._request = _BoundedRequest()
        self._lock = threading.Lock()
        self._cached: tuple[str, float] | None = None  # (token, expiry in Unix seconds)
        self._next_attempt = 0.0
        self._last_error: FaceIdError | None = None
        self._credentials: Any = None
        self.refreshes = 0
        if credentials_file:
            self._credentials = self._from_file(credentials_file)

    def _from_file(self, path: str) -> Any:
        """Read at start-up, so a missing or wrong file stops the connector at once."""
        from google.oauth2 import service_account

        if not os.path.exists(path):
            raise config_error(f"function.credentials_file {path} does not exist")
        try:
            if self.impersonate is not None:
                # No scopes here: with scopes, google-auth looks up an external account's
                # project at Cloud Resource Manager. The target scopes the source for IAM.
                source, _ = google.auth.load_credentials_from_file(path, request=self._request)
                return self._impersonating(source)
            return service_account.IDTokenCredentials.from_service_account_file(
                path, target_audience=self.audience
            )
        except FaceIdError:
            raise
        except Exception as exc:
            kind = "a service-account key file" if self.impersonate is None else "a credential file"
            raise config_error(
                f"function.credentials_file {path} is not {kind} ({type(exc).__name__})"
            ) from None

    def _impersonating(self, source: Any) -> _IamIdTokens:
        target = impersonated_credentials.Credentials(
            source_credentials=source,
            target_principal=self.impersonate,
            target_scopes=[CLOUD_PLATFORM_SCOPE],
        )
        return _IamIdTokens(target, self.audience)

    def _default_credentials(self) -> Any:
        from google.oauth2 import id_token

        try:
            if self.impersonate is not None:
                source, _ = google.auth.default(request=self._request)  # no scopes: see _from_file
                return self._impersonating(source)
            return id_token.fetch_id_token_credentials(self.audience, request=self._request)
        except exceptions.DefaultCredentialsError:
            raise engine_unavailable(
                "no Google credentials to call the comparison service: set "
                "function.credentials_file or GOOGLE_APPLICATION_CREDENTIALS"
            ) from None

    def token(self) -> str:
        """A token valid for at least a few more seconds; engine_unavailable if there is none.
        After a failed refresh, callers get the current token (or the same error) for
        RETRY_REFRESH_AFTER_S instead of each waiting on Google again."""
        cached = self._cached
        if cached is not None and self._clock() < cached[1] - self._margin:
            return cached[0]
        with self._lock:
            now = self._clock()
            cached = self._cached
            usable = cached is not None and now < cached[1] - MIN_VALIDITY_S
            if cached is not None and (now < cached[1] - self._margin):
                return cached[0]
            if now < self._next_attempt:
                if cached is not None and usable:
                    return cached[0]
                if self._last_error is not None:
                    raise self._last_error.fresh()
            try:
                return self._refresh()
            except FaceIdError as exc:
                error: FaceIdError = exc
            except Exception as exc:
                error = engine_unavailable(
                    "could not obtain a Google ID token for the comparison service "
                    f"({type(exc).__name__})"
                )
            self._next_attempt, self._last_error = now + RETRY_REFRESH_AFTER_S, error
            log("WARNING", f"ID token refresh failed: {error.message}", code=error.code)
            if cached is not None and usable:
                return cached[0]
            raise error

    def _refresh(self) -> str:
        if self._credentials is None:
            self._credentials = self._default_credentials()
        self._credentials.refresh(self._request)
        token = str(self._credentials.token)
        self._cached = (token, _expiry_seconds(self._credentials))
        self._last_error = None
        self.refreshes += 1
        return token
