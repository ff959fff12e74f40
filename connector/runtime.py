"""Everything a request needs, built once from the TOML file: secrets resolved, store opened,
clients pooled. A missing or wrong secret stops start-up with a clear message."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from faceverify.logs import log

from .auth import FailedAuthLimiter
from .config import ConnectorConfig
from .device import DeviceAccess, DeviceClient
from .lockout import Lockout
from .relay import FunctionClient
from .store import Store

#: Device sign-in + snapshot, then sign-out, then the function's own timeout (function.timeout_s,
#: at most 10 s by default) keep one verify well under the macro's 20 s budget.
DEVICE_BUDGET_S = 6.0
SIGNOUT_BUDGET_S = 2.0


@dataclass(frozen=True)
class Device:
    serial: str
    name: str
    access: DeviceAccess


@dataclass
class Runtime:
    config: ConnectorConfig
    store: Store
    devices: dict[str, Device]
    token_hashes: dict[str, str]
    device_client: DeviceClient
    function: FunctionClient
    lockout: Lockout
    auth_limiter: FailedAuthLimiter = field(default_factory=FailedAuthLimiter)
    last_match: dict[str, float] = field(default_factory=dict)
    clock: Callable[[], float] = time.time

    def log(self, severity: str, message: str, **fields: Any) -> None:
        log(severity, message, component="connector", **fields)

    def audit(self, request_id: str, serial: str, action: str, **fields: Any) -> None:
        """Record one request; a failing audit write is logged, never turned into an unlock."""
        try:
            self.store.record_audit(request_id=request_id, serial=serial, action=action, **fields)
        except Exception as exc:
            self.log("ERROR", "audit write failed", error_type=type(exc).__name__, serial=serial)
        self.log(
            "INFO",
            f"{action} {fields.get('outcome')}",
            trace=request_id,
            serial=serial,
            **{k: v for k, v in fields.items() if k in ("outcome", "code", "score", "stages_ms")},
        )

    def health(self) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        try:
            self.store.check()
            checks["store"] = "ok"
        except Exception as exc:
            checks["store"] = f"failed: {type(exc).__name__}"
        status = "ok" if checks["store"] == "ok" else "degraded"
        return {"status": status, "checks": checks}

    def close(self) -> None:
        self.store.close()


def build_runtime(config: ConnectorConfig) -> Runtime:
    devices: dict[str, Device] = {}
    for dev in config.devices:
        access = DeviceAccess(
            host=dev.host, username=dev.username, password=dev.resolve_password(), tls=dev.tls
        )
        devices[dev.serial] = Device(dev.serial, dev.name or dev.serial, access)
    store = Store.open(config.store.path, config.store.resolve_key())
    return Runtime(
        config=config,
        store=store,
        devices=devices,
        token_hashes=config.token_hashes(),
        device_client=DeviceClient(
            connect_timeout_s=config.device_defaults.connect_timeout_s,
            read_timeout_s=config.device_defaults.read_timeout_s,
            budget_s=DEVICE_BUDGET_S,
            signout_budget_s=SIGNOUT_BUDGET_S,
        ),
        function=FunctionClient(config.function, pool_size=config.server.threads),
        lockout=Lockout(store, config.policy),
    )
