"""A fake Google Secret Manager (REFERENCE.md §4): an in-process gRPC server answering
AccessSecretVersion, which the real google-cloud-secret-manager client reaches through
`SECRET_MANAGER_EMULATOR_HOST=<fake.address>` (or `fake.client()`).

Secrets are added and changed at run time: `add_version` (rotation), `set_state`
(DISABLED/DESTROYED versions answer FAILED_PRECONDITION, `latest` does not fall back),
`delete_secret` (NOT_FOUND), `deny` (PERMISSION_DENIED), `corrupt` (a wrong data_crc32c).
Every access is counted, failed ones included.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import google_crc32c
import grpc
from google.cloud.secretmanager_v1.types import resources, service

from devkit.fakes.loopback import HOST, LoopbackServer
from devkit.secrets_used import register

SERVICE = "google.cloud.secretmanager.v1.SecretManagerService"
VERSION_RE = re.compile(r"^(projects/[^/]+/secrets/[^/]+)/versions/([^/]+)$")
STATES = ("ENABLED", "DISABLED", "DESTROYED")


@dataclass
class _Version:
    data: bytes
    state: str = "ENABLED"
    corrupt: bool = False


@dataclass
class _Secret:
    versions: dict[int, _Version] = field(default_factory=dict)
    denied: bool = False


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class FakeSecretManager(LoopbackServer):
    """Thread-safe. `delay_s` slows every answer (to make concurrent callers overlap)."""

    def __init__(self, *, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self._lock = threading.Lock()
        self._secrets: dict[str, _Secret] = {}
        self._accesses: list[str] = []
        super().__init__()

    # -- the transport: gRPC instead of the base's HTTP ------------------------------------
    def _bind(self, port: int) -> int:
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "AccessSecretVersion": grpc.unary_unary_rpc_method_handler(
                    self._access,
                    request_deserializer=service.AccessSecretVersionRequest.deserialize,
                    response_serializer=service.AccessSecretVersionResponse.serialize,
                )
            },
        )
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        self._grpc.add_generic_rpc_handlers((handler,))
        return int(self._grpc.add_insecure_port(f"{HOST}:{port}"))

    def _serve(self) -> None:
        self._grpc.start()

    def _shutdown(self) -> None:
        self._grpc.stop(grace=None)

    def client(self) -> Any:
        """A real SecretManagerServiceClient talking to this fake (its `address` is the value
        of SECRET_MANAGER_EMULATOR_HOST)."""
        from google.cloud import secretmanager
        from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
            SecretManagerServiceGrpcTransport,
        )

        channel = grpc.insecure_channel(self.address)
        return secretmanager.SecretManagerServiceClient(
            transport=SecretManagerServiceGrpcTransport(channel=channel)
        )

    # -- contents ----------------------------------------------------------------------
    def add_version(self, secret: str, data: bytes | str) -> str:
        """Add a version to `projects/P/secrets/S` (created if needed); returns its full name.
        It becomes what `.../versions/latest` reads."""
        payload = data.encode() if isinstance(data, str) else data
        register("Secret Manager payload (FakeSecretManager)", payload)
        with self._lock:
            entry = self._secrets.setdefault(secret, _Secret())
            number = max(entry.versions, default=0) + 1
            entry.versions[number] = _Version(payload)
        return f"{secret}/versions/{number}"

    def set_state(self, version: str, state: str) -> None:
        """ENABLED, DISABLED or DESTROYED (destroying also forgets the data)."""
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}")
        with self._lock:
            found = self._find(version)
            found.state = state
            if state == "DESTROYED":
                found.data = b""

    def corrupt(self, version: str, corrupt: bool = True) -> None:
        """Answer this version with a data_crc32c that does not match its data."""
        with self._lock:
            self._find(version).corrupt = corrupt

    def deny(self, secret: str, denied: bool = True) -> None:
        """Refuse every access to `projects/P/secrets/S` (the caller lacks the accessor role)."""
        with self._lock:
            self._secrets.setdefault(secret, _Secret()).denied = denied

    def delete_secret(self, secret: str) -> None:
        with self._lock:
            self._secrets.pop(secret, None)

    # -- observation ---------------------------------------------------------------------
    @property
    def accesses(self) -> list[str]:
        """Names asked for, in order, answered or refused."""
        with self._lock:
            return list(self._accesses)

    def access_count(self, name: str | None = None) -> int:
        with self._lock:
            return sum(1 for n in self._accesses if name is None or n == name)

    # -- the RPC -------------------------------------------------------------------------
    def _find(self, version: str) -> _Version:
        found = self._resolve(version)[1]
        if found is None:
            raise KeyError(version)
        return found

    def _resolve(self, name: str) -> tuple[str, _Version | None]:
        """(resolved name, version), raising _Abort the way the real service answers."""
        m = VERSION_RE.match(name)
        if not m:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid resource name [{name}].")
        secret_name, wanted = m.groups()
        secret = self._secrets.get(secret_name)
        if secret is not None and secret.denied:
            raise _Abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"Permission 'secretmanager.versions.access' denied for resource '{name}' "
                "(or it may not exist).",
            )
        if secret is None or not secret.versions:
            raise _Abort(
                grpc.StatusCode.NOT_FOUND, f"Secret [{secret_name}] not found or has no versions."
            )
        if wanted == "latest":
            number = max(secret.versions)
        else:
            number = int(wanted) if wanted.isdigit() else -1
        version = secret.versions.get(number)
        if version is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"Secret Version [{name}] not found.")
        return f"{secret_name}/versions/{number}", version

    def _access(
        self, request: service.AccessSecretVersionRequest, context: grpc.ServicerContext
    ) -> service.AccessSecretVersionResponse:
        if self.delay_s:
            time.sleep(self.delay_s)
        try:
            with self._lock:
                self._accesses.append(request.name)
                resolved, version = self._resolve(request.name)
                if version is None or version.state != "ENABLED":
                    state = version.state if version else "DESTROYED"
                    raise _Abort(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"Secret Version [{resolved}] is in {state} state.",
                    )
                data, corrupt = version.data, version.corrupt
        except _Abort as failure:
            context.abort(failure.code, failure.message)
        checksum = google_crc32c.value(data) ^ (1 if corrupt else 0)
        return service.AccessSecretVersionResponse(
            name=resolved, payload=resources.SecretPayload(data=data, data_crc32c=checksum)
        )
