"""A device examined the way `admin add-device` and `admin test-device` show it: the certificate
it presents, what its xAPI says it is (serial, product, software, the Remote Monitoring option
key, HttpClient), a snapshot from a real sign-in and sign-out, and the faces the function finds
in it. Each check that fails names its fix.

Why: a device added with a wrong password, an unpinned certificate, no option key or a lid
closed would only show its fault at the first person's login. A bad password is tried once:
the device locks the account after five failures (REFERENCE §1), so nothing is tried after it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from faceid_core.errors import DeviceError, FaceIdError

from .device import DeviceAccess, DeviceClient
from .ports import Comparator
from .relay import Found
from .tls import display_fingerprint, normalize_fingerprint
from .tls import peer_fingerprint as read_peer_fingerprint
from .xapi import Xapi, leaf

Verdict = Literal["ok", "warning", "failed"]

#: What an administrator does about a failed step, by the error's code.
FIXES = {
    "device_auth_failed": (
        "check the user name and the password its secret reference holds (a local account of "
        "the device); wait for the device's lockout to end after 5 failures"
    ),
    "device_tls_error": (
        "check the certificate the device presents (its web page shows it) and pass its "
        "--fingerprint, or a --ca-bundle that signs it"
    ),
    "device_unreachable": (
        "check --host (address and port), the network path and that the device is on"
    ),
    "snapshot_unavailable": (
        "install the Remote Monitoring option key, open the camera lid, check the account's role"
    ),
    "xapi_refused": "give the account a role that may read status and configuration (Admin)",
    "xapi_unreadable": "check that --host is a RoomOS device's web interface",
    "engine_unavailable": (
        "check [function] in the configuration (`admin check-config`) and the function's /ready"
    ),
}
OPTION_KEY_FIX = (
    "install the Remote Monitoring option key on the device (Cisco licensing; "
    "`xCommand SystemUnit OptionKey Add`): without it there is no snapshot"
)
HTTP_CLIENT_FIX = (
    "`admin provision` switches it on (or `xConfiguration HttpClient Mode: On` on the device)"
)
PROXY_FIX = (
    "if the device's HTTP proxy cannot reach the connector, set "
    "`xConfiguration HttpClient UseHttpProxy: Off`"
)
NO_FACE_FIX = (
    "have someone look at the camera (open its lid) and run `admin test-device --save frame.jpg` "
    "to see what it sees"
)


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    detail: str
    fix: str | None = None


@dataclass
class Examination:
    """What was learnt; `frame` (the snapshot) stays in memory unless the administrator saves it."""

    host: str
    checks: list[Check] = field(default_factory=list)
    fingerprint: str | None = None  # hex, as presented
    serial: str | None = None
    product: str | None = None
    software: str | None = None
    faces: list[Found] = field(default_factory=list)
    frame: bytes | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return all(c.verdict != "failed" for c in self.checks)

    def note(self, name: str, verdict: Verdict, detail: str, fix: str | None = None) -> None:
        self.checks.append(Check(name, verdict, detail, fix))

    def failed(self, name: str, exc: FaceIdError) -> None:
        self.note(name, "failed", exc.message, FIXES.get(exc.code))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "host": self.host,
            "serial": self.serial,
            "product": self.product,
            "software": self.software,
            "certificate_sha256": self.fingerprint and display_fingerprint(self.fingerprint),
            "faces": [{"box": list(f.box), "score": f.quality} for f in self.faces],
            "checks": [asdict(c) for c in self.checks],
        }


def presented_fingerprint(access: DeviceAccess, timeout_s: float) -> str:
    """The SHA-256 (hex) of the certificate the device presents; DeviceError if unreachable."""
    try:
        return read_peer_fingerprint(access.hostname, access.port, timeout_s)
    except OSError as exc:
        raise DeviceError(
            "device_unreachable",
            f"Could not read the certificate of the device at {access.host}: "
            f"{exc.strerror or type(exc).__name__}",
        ) from None


def examine(
    camera: DeviceClient,
    function: Comparator,
    access: DeviceAccess,
    *,
    expected_serial: str | None = None,
    fingerprint: str | None = None,
) -> Examination:
    """Every check, in order; `fingerprint` is the one already read (and confirmed)."""
    result = Examination(access.host)
    try:
        presented = fingerprint or presented_fingerprint(access, camera.connect_timeout_s)
    except FaceIdError as exc:
        result.failed("certificate", exc)
        return result
    result.fingerprint = presented
    pin = access.tls.fingerprint_sha256
    if pin is not None and normalize_fingerprint(pin) != presented:
        result.note(
            "certificate",
            "failed",
            f"the device presents SHA-256 {display_fingerprint(presented)}, not the pinned one",
            FIXES["device_tls_error"],
        )
        return result
    shown = display_fingerprint(presented)
    if access.tls.insecure:
        result.note(
            "certificate",
            "warning",
            f"SHA-256 {shown}, not checked (insecure): anyone answering at its address gets the "
            "password",
            f"pin it: --fingerprint {shown}",
        )
    else:
        result.note("certificate", "ok", f"SHA-256 {shown} ({access.tls.kind})")
    if not _identity(camera, access, result, expected_serial):
        return result
    _snapshot_and_faces(camera, function, access, result)
    return result


def _identity(
    camera: DeviceClient, access: DeviceAccess, result: Examination, expected: str | None
) -> bool:
    """Serial, product, software, option key and HttpClient from the xAPI. False: stop here."""
    xapi = Xapi(camera, access)
    try:
        unit = xapi.read("/Status/SystemUnit")
    except FaceIdError as exc:
        result.failed("sign-in", exc)
        return False
    result.serial = leaf(unit, "SystemUnit/Hardware/Module/SerialNumber")
    result.product = leaf(unit, "SystemUnit/ProductId")
    result.software = leaf(unit, "SystemUnit/Software/DisplayName") or leaf(
        unit, "SystemUnit/Software/Version"
    )
    result.note("sign-in", "ok", f"{access.username!r} signed in to the xAPI")
    if result.serial is None:
        result.note(
            "serial", "failed", "the device did not say its serial number", FIXES["xapi_unreadable"]
        )
        return False
    if expected is not None and result.serial != expected:
        result.note(
            "serial",
            "failed",
            f"the device at {access.host} is {result.serial}, not {expected}",
            "check --host, or leave --serial out to take the device's own",
        )
        return False
    result.note(
        "serial", "ok", f"{result.serial}: {result.product or '?'}, {result.software or '?'}"
    )
    if leaf(unit, "SystemUnit/Software/OptionKeys/RemoteMonitoring") == "True":
        result.note("option key", "ok", "Remote Monitoring is installed")
    else:
        result.note(
            "option key", "failed", "the Remote Monitoring option key is missing", OPTION_KEY_FIX
        )
    try:
        http = xapi.read("/Configuration/HttpClient")
    except FaceIdError as exc:
        result.note("HttpClient", "warning", f"not read: {exc.message}", FIXES.get(exc.code))
        return True
    if leaf(http, "HttpClient/Mode") == "On":
        result.note("HttpClient", "ok", "HttpClient Mode is On")
    else:
        result.note(
            "HttpClient",
            "warning",
            "HttpClient Mode is Off: the macro cannot call",
            HTTP_CLIENT_FIX,
        )
    if leaf(http, "HttpClient/UseHttpProxy") == "On":
        result.note(
            "HTTP proxy", "warning", "the macro's requests go through the device's proxy", PROXY_FIX
        )
    return True


def _snapshot_and_faces(
    camera: DeviceClient, function: Comparator, access: DeviceAccess, result: Examination
) -> None:
    try:
        shot = camera.snapshot(access)
    except FaceIdError as exc:
        result.failed("snapshot", exc)
        return
    result.frame = shot.jpeg
    total = shot.signin_ms + shot.snapshot_ms + shot.signout_ms
    result.note(
        "snapshot",
        "ok",
        f"{len(shot.jpeg)} bytes; sign-in {shot.signin_ms:.0f} ms, snapshot "
        f"{shot.snapshot_ms:.0f} ms, sign-out {shot.signout_ms:.0f} ms ({total:.0f} ms)",
    )
    try:
        result.faces = function.inspect(shot.jpeg)
    except FaceIdError as exc:
        result.failed("face", exc)
        return
    if not result.faces:
        result.note("face", "warning", "no face in view", NO_FACE_FIX)
        return
    described = "; ".join(
        f"box {f.box}" + (f" score {f.quality:.2f}" if f.quality is not None else "")
        for f in result.faces
    )
    result.note("face", "ok", f"{len(result.faces)} face(s): {described}")
