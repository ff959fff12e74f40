"""Secret Manager reads: one client per process, CRC32C-checked payloads, errors that name the
secret but never its value. `SECRET_MANAGER_EMULATOR_HOST=host:port` talks to a local server."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from .errors import FaceIdError, config_error, upstream_timeout

SECRET_VERSION_RE = re.compile(r"^projects/[^/\s]+/secrets/[^/\s]+/versions/[^/\s]+$")
# What an HTTP header value can carry; anything else would fail later with a less clear error.
KEY_RE = re.compile(r"^[\x21-\x7e]{1,512}$")
#: How long a failed read is answered again without asking again: however often /ready is probed
#: or requests arrive, a broken secret costs one Secret Manager read per this many seconds.
FAILED_READ_KEPT_S = 5.0

_clients_lock = threading.Lock()
_clients: dict[str, Any] = {}


def _make_client(emulator: str) -> Any:
    from google.cloud import secretmanager

    if not emulator:
        return secretmanager.SecretManagerServiceClient()
    # The real client insists on TLS when only api_endpoint is set: hand it a plain channel.
    import grpc
    from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
        SecretManagerServiceGrpcTransport,
    )

    transport = SecretManagerServiceGrpcTransport(channel=grpc.insecure_channel(emulator))
    return secretmanager.SecretManagerServiceClient(transport=transport)


def _get_client() -> Any:
    emulator = os.environ.get("SECRET_MANAGER_EMULATOR_HOST", "").strip()
    with _clients_lock:
        client = _clients.get(emulator)
        if client is None:
            client = _clients[emulator] = _make_client(emulator)
        return client


def access_secret(name: str, what: str = "secret", timeout: float = 10.0) -> bytes:
    """Read one secret version; raises config_error saying which failure, never the payload."""
    if not SECRET_VERSION_RE.match(name):
        raise config_error(f"{what} must be projects/P/secrets/S/versions/V, got {name!r}")
    import google_crc32c
    from google.api_core import exceptions as gexc
    from google.api_core import retry as gretry

    transient = gretry.if_exception_type(gexc.ServiceUnavailable, gexc.ResourceExhausted)
    try:
        client = _get_client()
        response = client.access_secret_version(
            name=name,
            timeout=timeout,
            retry=gretry.Retry(predicate=transient, initial=0.1, maximum=1.0, timeout=timeout),
        )
    except gexc.NotFound:
        raise config_error(f"{what} {name} was not found") from None
    except gexc.PermissionDenied:
        raise config_error(f"permission denied reading {what} {name}") from None
    except gexc.FailedPrecondition:
        raise config_error(f"{what} {name} is disabled or destroyed") from None
    except gexc.GoogleAPICallError as exc:
        raise config_error(f"Secret Manager failed reading {what} {name} ({exc.code})") from None
    except Exception as exc:  # transport errors, missing credentials, retry deadline
        raise config_error(
            f"Secret Manager unreachable reading {what} {name} ({type(exc).__name__})"
        ) from None
    payload = response.payload
    # Secret Manager fills data_crc32c on access; verify it whenever it is there.
    if "data_crc32c" in payload and google_crc32c.value(payload.data) != payload.data_crc32c:
        raise config_error(f"{what} {name} failed its CRC32C check (corrupted in transit)")
    return bytes(payload.data)


class _Flight:
    """One fetch in progress; whoever asks meanwhile waits for it and shares its outcome."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: str | None = None
        self.error: FaceIdError | None = None


class CachedSecret:
    """A value fetched once per process. Threads that ask while a fetch runs wait for it and
    share its outcome, failure included, so a burst of requests costs one read; a failure is
    answered again for FAILED_READ_KEPT_S, then the next caller reads again (a repaired secret
    is taken). drop() forgets the value so a rotated secret is read again."""

    def __init__(
        self, fetch: Callable[[float], str], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._fetch = fetch
        self.clock = clock
        self._value: str | None = None
        self._flight: _Flight | None = None
        self._failed: tuple[FaceIdError, float] | None = None  # the error, until when
        self._lock = threading.Lock()

    def get(self, timeout: float) -> str:
        """The value, fetching it (within `timeout` seconds) when nothing is cached."""
        value = self._value
        if value is not None:
            return value
        with self._lock:
            if self._value is not None:
                return self._value
            if self._failed is not None and self.clock() < self._failed[1]:
                raise self._failed[0].fresh()
            flight, leader = self._flight, self._flight is None
            if flight is None:
                flight = self._flight = _Flight()
        if leader:
            try:
                flight.value = self._fetch(timeout)
            except FaceIdError as exc:
                flight.error = exc
            except Exception as exc:
                flight.error = config_error(f"reading the key failed ({type(exc).__name__})")
            finally:
                with self._lock:
                    self._value, self._flight = flight.value, None
                    kept = self.clock() + FAILED_READ_KEPT_S
                    self._failed = None if flight.error is None else (flight.error, kept)
                flight.done.set()
        elif not flight.done.wait(max(0.0, timeout)):
            raise upstream_timeout("Reading the API key did not finish in time")
        if flight.error is not None:
            error = flight.error
            raise error.fresh()
        assert flight.value is not None
        return flight.value

    def drop(self, rejected: str) -> None:
        """Forget the value if it is still the one that was rejected (not a newer one)."""
        with self._lock:
            if self._value == rejected:
                self._value = None


def mxface_key_source(key: str | None, secret_name: str | None) -> CachedSecret:
    """MXFACE_KEY wins (what --set-secrets injects); otherwise MXFACE_KEY_SECRET is read on use."""

    def fetch(timeout: float) -> str:
        if key:
            value, origin = key, "MXFACE_KEY"
        elif secret_name:
            origin = f"MXFACE_KEY_SECRET {secret_name}"
            raw = access_secret(secret_name, "MXFACE_KEY_SECRET", timeout)
            value = raw.decode("utf-8", "replace").strip()
        else:
            raise config_error("no MXFace key: set MXFACE_KEY or MXFACE_KEY_SECRET")
        if not value:
            raise config_error(f"{origin} is empty")
        if not KEY_RE.match(value):
            raise config_error(f"{origin} is not a valid API key (unexpected characters)")
        return value

    return CachedSecret(fetch)
