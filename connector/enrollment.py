"""Enrollment from the device's own camera: allowed on an empty device or inside an unlocked
session, and only for a snapshot holding exactly one usable face."""

from __future__ import annotations

from dataclasses import dataclass

from faceverify.errors import FaceIdError

from .faces import crop_face, downscale_jpeg
from .messages import screen_message
from .runtime import Device, Runtime
from .store import AuditEntry
from .verification import log_failure
from .webex import Event

REFUSALS = frozenset(
    {"locked", "no_face", "several_faces", "face_too_small", "too_dark", "too_many_references"}
)


@dataclass
class EnrollOutcome:
    result: str  # enrolled | refused | error
    code: str | None
    person: str | None

    @property
    def message(self) -> str:
        if self.result == "enrolled":
            return f"Photo saved for {self.person}."
        return screen_message(self.code or "internal_error")


def enroll_image(
    rt: Runtime, serial: str, person: str, jpeg: bytes, request_id: str, *, only_if_empty: bool
) -> EnrollOutcome:
    """Store a crop of the one usable face in `jpeg` (a snapshot or an administrator's file).
    `only_if_empty` re-checks "nobody enrolled yet" inside the store's write transaction."""
    image = downscale_jpeg(jpeg)
    faces = rt.function.inspect(image, trace=request_id)
    if not faces:
        return EnrollOutcome("refused", "no_face", person)
    if len(faces) > 1:
        return EnrollOutcome("refused", "several_faces", person)
    box = faces[0]
    if min(box[2], box[3]) < rt.config.policy.min_face_px:
        return EnrollOutcome("refused", "face_too_small", person)
    policy = rt.config.policy
    rt.store.add_reference(
        serial,
        person,
        crop_face(image, box),
        max_references_per_person=policy.max_references_per_person,
        max_people=policy.max_people_per_device,
        only_if_empty=only_if_empty,
        # In the same transaction: a crash cannot leave a photo nobody can account for.
        audit=AuditEntry("enroll", "enrolled", serial=serial, request_id=request_id, person=person),
    )
    return EnrollOutcome("enrolled", None, person)


def audit_enrollment(
    rt: Runtime, request_id: str, serial: str, person: str, outcome: EnrollOutcome
) -> None:
    """Log every enrollment; record the ones the store has not already recorded with the photo."""
    rt.audit(
        request_id,
        serial,
        "enroll",
        recorded=outcome.result == "enrolled",
        outcome=outcome.result,
        code=outcome.code,
        person=person,
    )


def _enroll(rt: Runtime, device: Device, person: str, request_id: str) -> EnrollOutcome:
    empty = rt.store.count_people(device.serial) == 0
    if not empty and not rt.store.is_unlocked(device.serial, rt.config.policy.unlock_ttl_s):
        return EnrollOutcome("refused", "locked", person)
    snapshot = rt.device_client.snapshot(device.access)
    return enroll_image(rt, device.serial, person, snapshot.jpeg, request_id, only_if_empty=empty)


def enroll(rt: Runtime, device: Device, person: str, request_id: str) -> EnrollOutcome:
    """Never raises: device, function and store failures become `error` with their code."""
    try:
        return _enroll(rt, device, person, request_id)
    except FaceIdError as exc:
        log_failure(rt, exc, request_id, device.serial)
        result = "refused" if exc.code in REFUSALS else "error"
        return EnrollOutcome(result, exc.code, person)
    except Exception as exc:
        rt.log("ERROR", "enroll failed unexpectedly", error_type=type(exc).__name__)
        return EnrollOutcome("error", "internal_error", person)


def enroll_event(device: Device, outcome: EnrollOutcome, request_id: str) -> Event:
    return Event(
        kind="enroll",
        serial=device.serial,
        device_name=device.name,
        outcome=outcome.result,
        code=outcome.code,
        person=outcome.person,
        message=outcome.message,
        trace=request_id,
    )
