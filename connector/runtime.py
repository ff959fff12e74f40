"""Everything a request needs, built once from the TOML file: secrets resolved, store opened,
clients pooled. A missing or wrong secret stops start-up with a clear message. A changed file is
taken in place by reload.py, which builds its parts with the functions at the end."""

from __future__ import annotations

import math
import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from faceid_core.logs import Severity, log, set_level

from .auth import FailedAuthLimiter
from .config import ConnectorConfig, DeviceConfig
from .device import DeviceAccess, DeviceClient
from .health import CachedCheck
from .lockout import Lockout
from .metrics import Metrics
from .ports import Camera, Clock, Comparator, Notices
from .protocol import Authenticator, ReplayCache
from .relay import FunctionClient
from .store import DeviceWebSession, Store
from .webex import Event, webex_notices

#: A verify's device part ends within device_defaults.budget_s (sign-in + snapshot, 6 s by
#: default), then this for the sign-out; with function.timeout_s (10 s by default) one verify
#: answers within 18 s, inside the macro's 25 s request timeout.
SIGNOUT_BUDGET_S = 2.0
#: Sign-outs of sessions a crash left open, run at once at start-up (each within its budget).
LEFTOVER_SIGNOUTS_AT_ONCE = 8
#: Beyond the device and function deadlines, how long a verify may hold its device before another
#: may start (a crashed connector's hold ends by itself).
ATTEMPT_LEASE_MARGIN_S = 5.0
#: Time given at shutdown to send the queued Webex messages (inside gunicorn's graceful timeout
#: and a container runtime's usual 10 s stop grace).
NOTIFY_DRAIN_S = 5.0


@dataclass(frozen=True)
class Device:
    serial: str
    name: str
    access: DeviceAccess


@dataclass
class Runtime:
    """What the rules (verification.py, enrollment.py) work with. The outward calls are typed
    by the Protocols of ports.py: build_runtime gives the network clients, tests may give the
    in-memory ones of memory.py. `lockout` should read the same `clock`."""

    config: ConnectorConfig
    store: Store
    devices: dict[str, Device]
    device_client: Camera
    function: Comparator
    lockout: Lockout
    auth_limiter: FailedAuthLimiter = field(default_factory=FailedAuthLimiter)
    last_match: dict[str, float] = field(default_factory=dict)  # serial -> clock() of a match
    clock: Clock = time.time
    metrics: Metrics = field(default_factory=Metrics)
    notices: Notices | None = None  # the administrators' Webex room; None: nobody is told
    function_check: CachedCheck = field(init=False)
    authenticator: Authenticator = field(init=False)

    def __post_init__(self) -> None:
        self.use_function(self.function)
        self.authenticator = Authenticator(self.device_key, ReplayCache(self.store), self.clock)

    def use_function(self, function: Comparator) -> None:
        """Call `function` from now on, and /healthz checks it (a reload's new client)."""
        self.function = function
        self.function_check = CachedCheck(function.reachable)

    @property
    def attempt_lease_s(self) -> float:
        device = self.device_client.budget_s + self.device_client.signout_budget_s
        return device + self.config.function.timeout_s + ATTEMPT_LEASE_MARGIN_S

    def device_key(self, serial: str) -> bytes | None:
        """Only configured devices have a key; read from the store on each request, so that
        `admin rotate-key` takes effect at once."""
        key = self.store.device_key(serial)  # looked up for an unknown serial too: same work
        return key if serial in self.devices else None

    def log(self, severity: Severity, message: str, **fields: Any) -> None:
        log(severity, message, component="connector", **fields)

    def audit(
        self, request_id: str, serial: str, action: str, *, recorded: bool = False, **fields: Any
    ) -> None:
        """Record one request (unless the store `recorded` it with its change) and log it (in
        its trace, the current one); a failing audit write is logged, never turned into an
        unlock."""
        try:
            if not recorded:
                self.store.record_audit(
                    request_id=request_id, serial=serial, action=action, **fields
                )
        except Exception as exc:
            self.log("ERROR", "audit write failed", error_type=type(exc).__name__, serial=serial)
        self.log(
            "INFO",
            f"{action} {fields.get('outcome')}",
            serial=serial,
            **{k: v for k, v in fields.items() if k in ("outcome", "code", "score", "stages_ms")},
        )

    def notify(self, event: Event) -> None:
        """Queue a message for the administrators; never blocks and never fails a request."""
        if self.notices is None:
            return
        try:
            self.notices.notify(event)
        except Exception as exc:
            self.log("ERROR", "notification failed", error_type=type(exc).__name__)

    def health(self) -> dict[str, Any]:
        """Status "ok"; "degraded" when only the function is unreachable or says it is not ready
        (the connector still answers every device, with engine_unavailable); "failing" when the
        store is."""
        checks: dict[str, Any] = {}
        try:
            self.store.check()
            checks["store"] = "ok"
        except Exception as exc:
            checks["store"] = f"failed: {getattr(exc, 'message', type(exc).__name__)}"
        reason, age = self.function_check.result()
        checks["function"] = reason or "ok"
        checks["function_checked_s_ago"] = round(age, 1)
        now = self.clock()
        devices = {
            serial: {
                "last_match_s_ago": (
                    round(now - self.last_match[serial], 1) if serial in self.last_match else None
                )
            }
            for serial in self.devices
        }
        status = "ok" if reason is None else "degraded"
        if checks["store"] != "ok":
            status = "failing"
        return {"status": status, "checks": checks, "devices": devices}

    def sign_out_leftovers(self) -> int:
        """At start-up, before serving: sign out the device web sessions a crash left open
        (recorded in the store; a device never ends them by itself and caps them), a few at a
        time. Each one signed out, or unknown to its device, is forgotten; one whose device
        does not answer is kept for the next start. Returns how many were signed out. Only for
        the service's start: a session in use by a running process would be cut off."""
        leftovers = self.store.device_sessions()
        if not leftovers:
            return 0
        with ThreadPoolExecutor(min(LEFTOVER_SIGNOUTS_AT_ONCE, len(leftovers))) as pool:
            closed = sum(pool.map(self._sign_out_leftover, leftovers))
        kept = len(leftovers) - closed
        self.log("INFO", "device web sessions left by a crash", signed_out=closed, kept=kept)
        return closed

    def _sign_out_leftover(self, leftover: DeviceWebSession) -> bool:
        """Never logs the session's cookies."""
        serial = leftover.serial
        if leftover.cookies is None or self.config.device(serial) is None:
            why = "damaged record" if leftover.cookies is None else "device no longer configured"
            self.log(
                "WARNING", "forgot a device session it cannot sign out", serial=serial, reason=why
            )
            self.store.forget_device_session(leftover.entry)
            return False
        device = self.devices.get(serial)
        if device is None:
            return False  # a runtime built for some devices only: left for the service
        result = self.device_client.sign_out_session(device.access, leftover.cookies)
        if not result.gone:
            self.log(
                "WARNING",
                "a device web session left by a crash could not be signed out; retried at the "
                "next start",
                serial=serial,
                host=device.access.host,
                reason=result.reason,
            )
            return False
        self.store.forget_device_session(leftover.entry)
        return True

    def close(self) -> None:
        """At worker exit: drain the Webex queue (bounded), then let go of clients and store."""
        if self.notices is not None:
            self.notices.close(NOTIFY_DRAIN_S)
        self.function.close()
        self.store.close()


def build_runtime(config: ConnectorConfig, serials: Collection[str] | None = None) -> Runtime:
    """`serials`: the devices to make reachable (None: all). Only their passwords are resolved, so
    an administrator's command works without every device's secret."""
    set_level(config.log.level)
    devices = {
        dev.serial: device_entry(dev, dev.resolve_password())
        for dev in config.devices
        if serials is None or dev.serial in serials
    }
    metrics = Metrics()
    # Administrators' commands (serials given) tell nobody and need no bot token.
    webex = webex_notices(config, metrics) if serials is None else None
    store = Store.open(
        config.store.location,
        config.store.resolve_key(),
        password=config.store.resolve_password(),
        pool_size=config.store.pool_size,
    )
    device_client = make_device_client(config, store, metrics)
    metrics.open_sessions.set_function(lambda: _recorded_sessions(store))
    clock = time.time
    return Runtime(
        config=config,
        store=store,
        devices=devices,
        device_client=device_client,
        function=function_client(config),
        lockout=Lockout(store, config.policy, clock),
        auth_limiter=FailedAuthLimiter(
            config.policy.failed_auth_limit, config.policy.failed_auth_window_s
        ),
        clock=clock,
        metrics=metrics,
        notices=webex,
    )


def device_entry(dev: DeviceConfig, password: str) -> Device:
    """A configured device as requests reach it, with its resolved password."""
    access = DeviceAccess(
        host=dev.host, username=dev.username, password=password, tls=dev.tls, serial=dev.serial
    )
    return Device(dev.serial, dev.name or dev.serial, access)


def make_device_client(config: ConnectorConfig, store: Store, metrics: Metrics) -> DeviceClient:
    """The devices' client, with [device_defaults]' time bounds."""
    defaults = config.device_defaults
    return DeviceClient(
        connect_timeout_s=defaults.connect_timeout_s,
        read_timeout_s=defaults.read_timeout_s,
        budget_s=defaults.budget_s,
        signout_budget_s=SIGNOUT_BUDGET_S,
        ledger=store,
        on_signout_failure=metrics.signout_failed,
    )


def function_client(config: ConnectorConfig) -> FunctionClient:
    """The function's client, pooled for as many connections as request threads."""
    return FunctionClient(config.function, pool_size=config.server.threads)


def _recorded_sessions(store: Store) -> float:
    """The gauge's value: a store that does not answer shows NaN instead of failing /metrics."""
    try:
        return float(store.count_device_sessions())
    except Exception:
        return math.nan
