"""The devices list and a device's page: health from what the connector already knows (the
macro's last contact, the last match, the lockout, the people enrolled), the people with their
photos, the photo route, "end lockout", and "check now". Each load of a page that shows kept
photos is audited (console_view_photos): who looked at whose faces.

A check signs in to the device and takes a picture, so it runs only when an administrator asks
(never on a page load); it is onboarding.examine, the same checks `admin test-device` prints."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Blueprint, Response, abort, redirect, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from ..device import DeviceClient
from ..onboarding import Examination, examine
from ..runtime import Device, Runtime
from ..store import AuditEntry
from .memo import Expiring
from .web import Console

#: A check's result waits this long for its page, for this many devices and administrators.
CHECK_TTL_S = 600.0
CHECKS_KEPT = 200


@dataclass(frozen=True)
class Health:
    device: Device
    people: int
    last_contact: float | None  # the last signed request of its macro
    last_match: AuditEntry | None
    lockout_s: int  # 0: it may try now
    failures: int  # towards the next lockout


def health(rt: Runtime, device: Device) -> Health:
    """From the store only: nothing here calls the device."""
    serial = device.serial
    report = rt.store.last_report(serial)
    requests = rt.store.audit_page(serial=serial, device_only=True, limit=1)
    seen = [report[0]] if report is not None else []
    seen += [entry.time for entry in requests if entry.time is not None]
    matches = rt.store.audit_page(serial=serial, action="verify", outcome="match", limit=1)
    return Health(
        device=device,
        people=rt.store.count_people(serial),
        last_contact=max(seen) if seen else None,
        last_match=matches[0] if matches else None,
        lockout_s=rt.lockout.check(serial),
        failures=rt.store.lockout_state(serial).failures,
    )


def register(bp: Blueprint, console: Console) -> None:
    rt = console.rt
    checks: Expiring[Examination] = Expiring(CHECK_TTL_S, CHECKS_KEPT)

    def check_key(serial: str) -> str:
        return f"{console.session().token}/{serial}"

    def to_device(serial: str, anchor: str = "") -> BaseResponse:
        return redirect(url_for(".device_page", serial=serial) + anchor, 303)

    @bp.get("/devices")
    def devices_page() -> str:
        return console.render(
            "devices.html", healths=[health(rt, device) for device in rt.devices.values()]
        )

    @bp.get("/devices/<serial>")
    def device_page(serial: str) -> str:
        device = console.device(serial)
        people = [(p, rt.store.references(serial, p.name)) for p in rt.store.people(serial)]
        if any(photos for _, photos in people):
            rt.store.add_audit(console.entry("console_view_photos", "done", serial))
        return console.render(
            "device.html",
            h=health(rt, device),
            people=people,
            check=checks.get(check_key(serial)),
            max_people=rt.config.policy.max_people_per_device,
        )

    @bp.post("/devices/<serial>/check")
    def check(serial: str) -> BaseResponse:
        device = console.device(serial)
        camera = rt.device_client
        if not isinstance(camera, DeviceClient):  # an in-memory camera (tests) has no xAPI
            console.say("error", "This connector's device client cannot examine a device.")
            return to_device(serial)
        result = examine(camera, rt.function, device.access, expected_serial=serial)
        result.frame = None  # the picture shows the room: not kept
        checks.put(result, key=check_key(serial))
        outcome = "ok" if result.ok else "failed"
        rt.store.add_audit(console.entry("console_check", outcome, serial))
        return to_device(serial, "#checks")

    @bp.post("/devices/<serial>/unlock")
    def unlock(serial: str) -> BaseResponse:
        console.device(serial)
        said = rt.lockout.end(serial, audit=console.entry("console_unlock_lockout", "done", serial))
        console.say("done", said)
        if request.form.get("back") == "devices":
            return redirect(url_for(".devices_page"), 303)
        return to_device(serial)

    @bp.get("/photo/<serial>/<int:ref_id>")
    def photo(serial: str, ref_id: int) -> Response:
        """Decrypted in memory for this answer only; never cached (the after-hook's no-store).
        Not audited one by one: the page that shows photos is (console_view_photos)."""
        console.device(serial)
        found = rt.store.reference_image(serial, ref_id)
        if found is None:
            abort(404)
        return Response(found[1], mimetype="image/jpeg")
