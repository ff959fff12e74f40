"""Secret Manager reads: one client per process, CRC32C-checked payloads, errors that name the
secret but never its value. `SECRET_MANAGER_EMULATOR_HOST=host:port` talks to a local server."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from typing import Any

from .errors import config_error

SECRET_VERSION_RE = re.compile(r"^projects/[^/\s]+/secrets/[^/\s]+/versions/[^/\s]+$")

_client_lock = threading.Lock()
_client: Any = None


def _make_client() -> Any:
    from google.cloud import secretmanager

    emulator = os.environ.get("SECRET_MANAGER_EMULATOR_HOST", "").strip()
    if emulator:
        import grpc
        from google.auth.credentials import AnonymousCredentials
        from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
            SecretManagerServiceGrpcTransport,
        )

        transport = SecretManagerServiceGrpcTransport(
            channel=grpc.insecure_channel(emulator), credentials=AnonymousCredentials()
        )
        return secretmanager.SecretManagerServiceClient(transport=transport)
    return secretmanager.SecretManagerServiceClient()


def _get_client() -> Any:
    global _client
    with _client_lock:
        if _client is None:
            _client = _make_client()
        return _client


def access_secret(name: str, what: str = "secret", timeout: float = 10.0) -> bytes:
    """Read one secret version; raises config_error saying which failure, never the payload."""
    if not SECRET_VERSION_RE.match(name):
        raise config_error(f"{what} must be projects/P/secrets/S/versions/V, got {name!r}")
    from google.api_core import exceptions as gexc

    try:
        client = _get_client()
        response = client.access_secret_version(name=name, timeout=timeout)
    except gexc.NotFound:
        raise config_error(f"{what} {name} was not found") from None
    except gexc.PermissionDenied:
        raise config_error(f"permission denied reading {what} {name}") from None
    except gexc.FailedPrecondition:
        raise config_error(f"{what} {name} is disabled or destroyed") from None
    except gexc.GoogleAPICallError as exc:
        raise config_error(f"Secret Manager failed reading {what} {name} ({exc.code})") from None
    except Exception as exc:  # transport errors, missing credentials
        raise config_error(
            f"Secret Manager unreachable reading {what} {name} ({type(exc).__name__})"
        ) from None
    payload = response.payload
    import google_crc32c

    if "data_crc32c" in payload and google_crc32c.value(payload.data) != payload.data_crc32c:
        raise config_error(f"{what} {name} failed its CRC32C check (corrupted in transit)")
    return bytes(payload.data)


class CachedSecret:
    """A value fetched once per process even when many threads ask at once; drop() forgets it."""

    def __init__(self, fetch: Callable[[], str]) -> None:
        self._fetch = fetch
        self._value: str | None = None
        self._lock = threading.Lock()

    def get(self) -> str:
        value = self._value
        if value is not None:
            return value
        with self._lock:
            if self._value is None:
                self._value = self._fetch()
            return self._value

    def drop(self) -> None:
        with self._lock:
            self._value = None


def mxface_key_source(key: str | None, secret_name: str | None) -> CachedSecret:
    """MXFACE_KEY wins (what --set-secrets injects); otherwise MXFACE_KEY_SECRET is read on use."""

    def fetch() -> str:
        if key:
            return key
        if not secret_name:
            raise config_error("no MXFace key: set MXFACE_KEY or MXFACE_KEY_SECRET")
        value = access_secret(secret_name, "MXFACE_KEY_SECRET").decode("utf-8", "replace").strip()
        if not value:
            raise config_error(f"MXFACE_KEY_SECRET {secret_name} is empty")
        return value

    return CachedSecret(fetch)

