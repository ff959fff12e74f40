"""`admin provision`: put face login on a device over its xAPI (REFERENCE §6), with a device
administrator's account that is used for this run only and never stored.

The steps, each safe to repeat: check the device is the configured serial; switch on Macros,
Macros AutoStart and HttpClient where they are off; trust the connector's CA; save the macro
with its SETTINGS filled in (the connectors' URLs, the device key, relock time, and a push id);
activate it and restart the macro runtime; then wait until that very push reports in with a
signed POST /v1/status. Running it again upgrades the macro and keeps the key.

A new key (`admin rotate-key`) is stored only once the macro holding it is saved on the device,
just before the runtime restarts: a device that cannot be reached keeps its working old key.
"""

from __future__ import annotations

import json
import re
import secrets
import sysconfig
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from faceid_core.errors import FaceIdError, config_error

from .config import ConnectorConfig
from .device import DeviceAccess, DeviceClient
from .onboarding import FIXES
from .protocol import encode_key, new_device_key
from .store import AuditEntry, Store
from .xapi import Xapi, leaf

MACRO_NAME = "faceid"
#: The SETTINGS lines provisioning writes, each `  key: <literal>,` on one line of the macro.
SETTINGS_LINE = re.compile(
    r"^(  (?P<key>connectorUrls|deviceKey|allowInsecureHttps|allowPlainHttp|relockIdleSeconds"
    r"|pushId): ).*,$",
    re.MULTILINE,
)
#: What a device must have for the macro to run and reach the connector.
REQUIRED_CONFIGURATION = {"Macros Mode": "On", "Macros AutoStart": "On", "HttpClient Mode": "On"}
REPORT_POLL_S = 0.1  # a store read: the report is seen within this of its arrival
ALREADY_TRUSTED = re.compile(r"already|exists", re.IGNORECASE)
PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----"
)


def shipped_macro() -> Path:
    """macro/faceid.js: beside the connector package (the repository, the image), else where
    `pip install .` puts it (pyproject.toml's data-files: <environment>/share/faceid-roomos)."""
    beside = Path(__file__).resolve().parents[1] / "macro" / "faceid.js"
    if beside.is_file():
        return beside
    return Path(sysconfig.get_path("data")) / "share" / "faceid-roomos" / "faceid.js"


def filled_macro(source: str, values: Mapping[str, Any]) -> str:
    """The macro with each SETTINGS value replaced by a JSON literal (valid JavaScript)."""
    seen: Counter[str] = Counter()

    def fill(match: re.Match[str]) -> str:
        key = match["key"]
        seen[key] += 1
        return f"{match[1]}{json.dumps(values[key])},"

    text = SETTINGS_LINE.sub(fill, source)
    wrong = sorted(key for key in values if seen[key] != 1)
    if wrong:
        raise config_error(
            f"the macro to push has no single SETTINGS line for {', '.join(wrong)}: "
            "provisioning.macro must be a copy of macro/faceid.js"
        )
    return text


@dataclass(frozen=True)
class Plan:
    """What every device of one run gets."""

    connector_urls: tuple[str, ...]  # first preferred
    ca_certificates: tuple[str, ...]  # PEM, each added on its own (CA Add takes one)
    macro_source: str
    relock_idle_s: int
    report_wait_s: float


def plan_for(config: ConnectorConfig) -> Plan:
    """The run's plan from [provisioning]; config_error naming what is missing."""
    prov = config.provisioning
    if prov.connector_urls is None:
        raise config_error(
            "provisioning.connector_urls is not set: the URLs the devices reach the connectors "
            'at, first preferred, e.g. ["https://faceid.example.internal:8443"]'
        )
    ca_path = prov.ca_cert or config.server.tls_cert
    if ca_path is None and any(url.startswith("https:") for url in prov.connector_urls):
        raise config_error(
            "provisioning.ca_cert is not set and there is no server.tls_cert: the devices must "
            "trust the connector's certificate"
        )
    macro_path = Path(prov.macro) if prov.macro else shipped_macro()
    certificates = _certificates(Path(ca_path)) if ca_path else ()
    source = _read(macro_path)
    filled_macro(source, _values(prov.connector_urls, "", prov.relock_idle_s, ""))  # checked now
    return Plan(prov.connector_urls, certificates, source, prov.relock_idle_s, prov.report_wait_s)


def _certificates(path: Path) -> tuple[str, ...]:
    """Each certificate of a PEM file (a chain file holds several: each one is trusted, so the
    device finds its anchor whichever the chain's top is)."""
    blocks = tuple(m[0] + "\n" for m in PEM_CERTIFICATE.finditer(_read(path)))
    try:
        for block in blocks:
            x509.load_pem_x509_certificate(block.encode())
    except ValueError:
        blocks = ()
    if not blocks:
        raise config_error(f"provisioning: {path} holds no readable PEM certificate")
    return blocks


def _read(path: Path) -> str:
    try:
        return path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise config_error(f"provisioning: cannot read {path} ({exc})") from None


def _plain_http(urls: tuple[str, ...]) -> bool:
    return any(url.startswith("http:") for url in urls)


def _values(urls: tuple[str, ...], key: str, relock_s: int, push: str) -> dict[str, Any]:
    return {
        "connectorUrls": list(urls),
        "deviceKey": key,
        "allowInsecureHttps": False,  # the connector's CA is on the device
        "allowPlainHttp": _plain_http(urls),
        "relockIdleSeconds": relock_s,
        "pushId": push,
    }


@dataclass
class Outcome:
    """One device's run: what was done, and the step that failed (if one did) with why."""

    serial: str
    done: list[str] = field(default_factory=list)
    failed: str | None = None
    why: str | None = None
    fix: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed is None

    def to_json(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "ok": self.ok,
            "done": self.done,
            "failed": self.failed,
            "why": self.why,
            "fix": self.fix,
        }


class _Failed(Exception):
    def __init__(self, step: str, why: str, fix: str | None) -> None:
        self.step, self.why, self.fix = step, why, fix


def provision(
    camera: DeviceClient,
    store: Store,
    access: DeviceAccess,
    serial: str,
    plan: Plan,
    *,
    new_key: bool = False,
    audit: Callable[..., AuditEntry],
    progress: Callable[[str], None] = lambda step: None,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """Provision one device with `access` (a device administrator's account). `new_key`: give
    it a fresh key (rotate-key). `audit(action, outcome, **fields)` makes an audit entry of this
    device. Never raises for a device's fault: the Outcome says it."""
    outcome = Outcome(serial)
    xapi = Xapi(camera, access)
    step = "identity"
    try:
        progress(step)
        found = leaf(xapi.read("/Status/SystemUnit"), "SystemUnit/Hardware/Module/SerialNumber")
        if found != serial:
            raise _Failed(
                step, f"the device at {access.host} is {found or 'unnamed'}, not {serial}", None
            )
        step = "configuration"
        progress(step)
        outcome.done.append(_configure(xapi, plan))
        if plan.ca_certificates:
            step = "CA certificate"
            progress(step)
            added = sum(
                xapi.command(
                    "Security Certificates CA Add",
                    body=pem,
                    accept=lambda reason: bool(ALREADY_TRUSTED.search(reason)),
                )
                for pem in plan.ca_certificates
            )
            kept = len(plan.ca_certificates) - added
            outcome.done.append(", ".join(_counted(added, "added") + _counted(kept, "kept")))
        step = "macro"
        progress(step)
        stored = store.device_key(serial)
        key = new_device_key() if new_key or stored is None else stored
        push = secrets.token_urlsafe(12)
        values = _values(plan.connector_urls, encode_key(key), plan.relock_idle_s, push)
        source = filled_macro(plan.macro_source, values)
        xapi.command("Macros Macro Save", {"Name": MACRO_NAME, "OverWrite": "True"}, body=source)
        outcome.done.append(f"macro saved ({len(source.encode()) / 1024:.0f} kB)")
        if key != stored:
            store.set_device_key(serial, key, audit=audit("rotate_key", "done"))
            outcome.done.append("new device key")
        step = "activation"
        progress(step)
        xapi.command("Macros Macro Activate", {"Name": MACRO_NAME})
        xapi.command("Macros Runtime Restart")
        outcome.done.append("activated, restarted")
        step = "report"
        progress(step)
        outcome.done.append(_await_report(store, serial, push, plan, clock))
    except _Failed as failed:
        outcome.failed, outcome.why, outcome.fix = failed.step, failed.why, failed.fix
    except FaceIdError as exc:
        outcome.failed, outcome.why, outcome.fix = step, exc.message, FIXES.get(exc.code)
    code = None if outcome.ok else f"failed_at_{step.replace(' ', '_')}"
    store.add_audit(audit("provision", "done" if outcome.ok else "failed", code=code))
    return outcome


def _counted(n: int, what: str) -> list[str]:
    return [f"CA {what}" if n == 1 else f"{n} CAs {what}"] if n else []


def _configure(xapi: Xapi, plan: Plan) -> str:
    """Set what differs from REQUIRED_CONFIGURATION (and AllowHTTP for an http:// URL)."""
    wanted = dict(REQUIRED_CONFIGURATION)
    if _plain_http(plan.connector_urls):
        wanted["HttpClient AllowHTTP"] = "True"
    sections = {name.split()[0] for name in wanted}
    trees = {section: xapi.read(f"/Configuration/{section}") for section in sections}
    current = {name: leaf(trees[name.split()[0]], name.replace(" ", "/")) for name in wanted}
    changes = {name: value for name, value in wanted.items() if current[name] != value}
    if not changes:
        return "config already right"
    xapi.configure(changes)
    return "set " + ", ".join(f"{name} {value}" for name, value in changes.items())


def _await_report(
    store: Store, serial: str, push: str, plan: Plan, clock: Callable[[], float]
) -> str:
    started = clock()
    deadline = started + plan.report_wait_s
    while True:
        report = store.last_report(serial)
        if report is not None and report[1] == push:
            return f"reported in ({clock() - started:.1f} s)"
        if clock() >= deadline:
            raise _Failed(
                "report",
                f"the macro did not report in within {plan.report_wait_s:g} s",
                f"check that the device reaches {' or '.join(plan.connector_urls)} (HttpClient, "
                "its proxy, the firewall, the connector's certificate), that a connector is "
                "running, and the macro's log in the device's Macro Editor",
            )
        time.sleep(REPORT_POLL_S)
