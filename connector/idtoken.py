"""Google ID tokens for calling the private comparison function: fetched once, shared by every
thread, refreshed (by one thread) five minutes before they expire.

Credentials come from a service-account key file, or else application default credentials
(GOOGLE_APPLICATION_CREDENTIALS, then the metadata server when running on Google Cloud).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import google.auth.transport.requests
from faceverify.errors import FaceIdError, config_error
from faceverify.logs import log

REFRESH_MARGIN_S = 300.0
TOKEN_HTTP_TIMEOUT_S = 10.0
RETRY_REFRESH_AFTER_S = 30.0
MIN_VALIDITY_S = 30.0  # a token closer than this to expiry may lapse in flight


def engine_unavailable(message: str) -> FaceIdError:
    return FaceIdError(502, "engine_unavailable", message)


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
    from google.auth import jwt

    return float(jwt.decode(credentials.token, verify=False)["exp"])


class IdTokenSource:
    def __init__(
        self,
        audience: str,
        credentials_file: str | None = None,
        *,
        clock: Callable[[], float] = time.time,
        refresh_margin_s: float = REFRESH_MARGIN_S,
    ) -> None:
        self.audience = audience
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
        """Read at start-up, so a missing or wrong key file stops the connector at once."""
        from google.oauth2 import service_account

        try:
            return service_account.IDTokenCredentials.from_service_account_file(
                path, target_audience=self.audience
            )
        except FileNotFoundError:
            raise config_error(f"function.credentials_file {path} does not exist") from None
        except Exception as exc:
            raise config_error(
                f"function.credentials_file {path} is not a service-account key file "
                f"({type(exc).__name__})"
            ) from None

    def _default_credentials(self) -> Any:
        from google.auth.exceptions import DefaultCredentialsError
        from google.oauth2 import id_token

        try:
            return id_token.fetch_id_token_credentials(self.audience, request=self._request)
        except DefaultCredentialsError:
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
                    last = self._last_error
                    raise FaceIdError(last.status, last.code, last.message)
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
