"""Enrollment, bound to identity. At the device: the first person at a device nobody is enrolled
on (policy.self_enroll = "first"), or the person whose match opened the current unlocked session,
adding one photo of their own face (it must match their anchor, the first photo kept of them) to
their own name, once per unlock. Everyone else is added by an administrator.

Every photo kept is a crop of the one face of its picture, checked exactly as verification will
use it (the function verifies the crop against itself), so a stored reference always works."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from faceid_core.errors import FaceError, FaceIdError, InputError, ReferenceUnusable, Refusal

from .faces import crop_face, downscale_jpeg
from .messages import screen_message
from .names import name_key
from .runtime import Device, Runtime
from .store import AuditEntry, Session
from .verification import log_failure
from .webex import EnrollResult, Event

#: What ends an enrollment as "refused" (the rules, or the picture), not as an "error".
REFUSED = (Refusal, FaceError)


@dataclass
class EnrollOutcome:
    result: EnrollResult
    code: str | None
    person: str | None

    @property
    def message(self) -> str:
        if self.result == "enrolled":
            return f"Photo saved for {self.person}."
        return screen_message(self.code or "internal_error")


def usable_crop(rt: Runtime, jpeg: bytes, request_id: str) -> bytes:
    """The crop of the picture's one face, once the function has matched it against itself:
    a crop it cannot find a face in, or cannot recognise, would fail every later verify."""
    image = downscale_jpeg(jpeg)
    faces = rt.function.inspect(image, trace=request_id)
    if not faces:
        raise Refusal("no_face", "No face in the picture")
    if len(faces) > 1:
        raise Refusal("several_faces", "More than one face in the picture")
    box = faces[0].box
    if min(box[2], box[3]) < rt.config.policy.min_face_px:
        raise Refusal("face_too_small", "The face is too small in the picture")
    crop = crop_face(image, box)
    try:
        itself = rt.function.verify(
            crop, [("self", crop)], trace=request_id, threshold=rt.config.policy.threshold
        )
    except (FaceError, InputError):  # no usable face in the crop, or it cannot be read
        itself = None
    if itself is None or itself.verdict != "match":
        raise Refusal("photo_unusable", "The face crop does not match itself")
    return crop


def held_to(rt: Runtime, serial: str, person: str, crop: bytes, request_id: str) -> None:
    """A new photo of `person` must match their anchor, the first photo kept of them (score at
    the threshold): not merely the last update, which a chain of morphs could walk away."""
    anchor = rt.store.anchor_of(serial, person)
    if anchor is None:
        raise Refusal("new_person_needs_admin", f"{person!r} has no photo to compare with")
    try:
        result = rt.function.verify(
            crop, [("anchor", anchor)], trace=request_id, threshold=rt.config.policy.threshold
        )
    except ReferenceUnusable:
        result = None
    if result is None or result.verdict != "match":
        raise Refusal("not_you", f"The face in view is not {person}'s")


def enroll_image(
    rt: Runtime,
    serial: str,
    person: str,
    jpeg: bytes,
    request_id: str,
    *,
    only_if_empty: bool,
    session: Session | None = None,
    actor: str | None = None,
) -> str:
    """Keep a usable crop of `jpeg` as a photo of `person` (returned); refusals raise.
    `only_if_empty` and `session` are checked again inside the store's write transaction.
    `actor`: the administrator who asked (admin enroll), named in the audit; None from a device."""
    crop = usable_crop(rt, jpeg, request_id)
    if session is not None:
        held_to(rt, serial, person, crop, request_id)
    policy = rt.config.policy
    rt.store.add_reference(
        serial,
        person,
        crop,
        max_references_per_person=policy.max_references_per_person,
        max_people=policy.max_people_per_device,
        only_if_empty=only_if_empty,
        session=session,
        session_ttl_s=policy.unlock_ttl_s,
        now=rt.clock(),
        # In the same transaction: a crash cannot leave a photo nobody can account for.
        audit=AuditEntry(
            "enroll", "enrolled", serial=serial, request_id=request_id, person=person, actor=actor
        ),
    )
    return person


def outcome_of(
    rt: Runtime, serial: str, person: str, request_id: str, action: Callable[[], str]
) -> EnrollOutcome:
    """Run an enrollment of `person` (`action` returns the name the photo was kept under); never
    raises: refusals, device, function and store failures become outcomes with their code."""
    try:
        return EnrollOutcome("enrolled", None, action())
    except FaceIdError as exc:
        log_failure(rt, exc, serial)
        return EnrollOutcome("refused" if isinstance(exc, REFUSED) else "error", exc.code, person)
    except Exception as exc:
        rt.log("ERROR", "enroll failed unexpectedly", error_type=type(exc).__name__)
        return EnrollOutcome("error", "internal_error", person)


def audit_enrollment(
    rt: Runtime,
    request_id: str,
    serial: str,
    person: str,
    outcome: EnrollOutcome,
    *,
    actor: str | None = None,
) -> None:
    """Log every enrollment; record the ones the store has not already recorded with the photo
    (naming `actor`, as enroll_image did)."""
    rt.audit(
        request_id,
        serial,
        "enroll",
        recorded=outcome.result == "enrolled",
        outcome=outcome.result,
        code=outcome.code,
        person=outcome.person or person,
        actor=actor,
    )


def _at_device(rt: Runtime, device: Device, person: str, request_id: str) -> str:
    """Who may enroll what from the device's own camera (module docstring)."""
    policy = rt.config.policy
    if policy.self_enroll == "never":
        raise Refusal("self_enroll_off", "Device-side enrollment is off (policy.self_enroll)")
    people = rt.store.people(device.serial)
    if not people:
        snapshot = rt.device_client.snapshot(device.access)
        return enroll_image(
            rt, device.serial, person, snapshot.jpeg, request_id, only_if_empty=True
        )
    session = rt.store.unlocked_session(device.serial, policy.unlock_ttl_s, now=rt.clock())
    if session is None:
        raise Refusal("locked", "No unlocked session on this device")
    if policy.max_references_per_person < 2:
        raise Refusal("too_many_references", "One photo per person: only the first is kept")
    wanted = name_key(person)
    if wanted != name_key(session.person):
        taken = any(name_key(p.name) == wanted for p in people)
        code = "not_you" if taken else "new_person_needs_admin"
        raise Refusal(code, f"{person!r} is not the person who unlocked the screen")
    snapshot = rt.device_client.snapshot(device.access)
    try:
        kept = enroll_image(
            rt, device.serial, session.person, snapshot.jpeg, request_id,
            only_if_empty=False, session=session,
        )  # fmt: skip
    except Refusal as exc:
        if exc.code == "not_you":  # someone else is at the camera: the session is over
            rt.store.end_unlocked(device.serial, now=rt.clock())
        raise
    rt.store.end_unlocked(device.serial, now=rt.clock())  # one update per unlock
    return kept


def enroll(rt: Runtime, device: Device, person: str, request_id: str) -> EnrollOutcome:
    return outcome_of(
        rt, device.serial, person, request_id, lambda: _at_device(rt, device, person, request_id)
    )


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
