"""A device's people, changed by an administrator: add a person or a photo by upload or from the
device's camera, remove one photo or a person. Every enrollment goes through enrollment.py's
enroll_image, as `admin enroll` does (the face crop, checked as verification will use it), and
names the administrator in the audit. A removal asks first: the POST without confirm=yes only
shows what would go.

A camera snapshot stays in memory (memo.Expiring: two minutes, a few at a time and a few per
session), tied to the device and to the session that took it, until "keep" enrolls it (once:
two "keep"s at the same moment enroll it once) or it expires."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from faceid_core.errors import FaceIdError, bad_request
from faceid_core.images import sniff_format
from flask import Blueprint, Response, abort, redirect, request, url_for
from PIL import Image
from werkzeug.wrappers import Response as BaseResponse

from .. import validation
from ..enrollment import audit_enrollment, enroll_image, outcome_of
from ..faces import downscale_jpeg
from ..relay import Found
from . import UPLOAD_MAX_BYTES
from .memo import Expiring
from .web import Console, request_id

SNAPSHOT_TTL_S = 120.0
SNAPSHOTS_KEPT = 16
SNAPSHOTS_PER_SESSION = 4
#: A name the remove form may carry back: longer than any name the rules let in.
STORED_NAME_MAX_LEN = 4 * validation.PERSON_MAX_LEN


@dataclass(frozen=True)
class Held:
    """A snapshot waiting for "keep": the picture as the function saw it, and its faces."""

    serial: str
    session: str  # the console session that took it: nobody else sees it
    jpeg: bytes = field(repr=False)
    width: int
    height: int
    faces: list[Found]


def register(bp: Blueprint, console: Console) -> None:
    rt = console.rt
    snapshots: Expiring[Held] = Expiring(
        SNAPSHOT_TTL_S, SNAPSHOTS_KEPT, per_group=SNAPSHOTS_PER_SESSION
    )

    def to_device(serial: str) -> BaseResponse:
        return redirect(url_for(".device_page", serial=serial), 303)

    def enroll(serial: str, name: str | None, jpeg: bytes) -> None:
        """Keep a photo of `name`, as `admin enroll` does; the outcome becomes a notice."""
        try:
            person = validation.person(name)
        except FaceIdError as exc:
            console.say("refused", exc.message)
            return
        actor, trace = console.session().admin, request_id()
        outcome = outcome_of(
            rt,
            serial,
            person,
            trace,
            lambda: enroll_image(rt, serial, person, jpeg, trace, only_if_empty=False, actor=actor),
        )
        audit_enrollment(rt, trace, serial, person, outcome, actor=actor)
        if outcome.result == "enrolled":
            console.say("done", f"Photo kept for {person}.")
        else:
            console.say(
                "refused" if outcome.result == "refused" else "error",
                f"Nothing was saved for {person}: {outcome.message} ({outcome.code})",
            )

    def held(serial: str, token: str, *, take: bool = False) -> Held:
        """The snapshot behind `token` if this session took it of this device, else 404; `take`
        takes it out of memory too (in one step: of two simultaneous "keep"s, one gets it)."""
        session = console.session().token

        def mine(snapshot: Held) -> bool:
            return (snapshot.serial, snapshot.session) == (serial, session)

        snapshot = snapshots.pop(token, only_if=mine) if take else snapshots.get(token)
        if snapshot is None or not mine(snapshot):
            abort(404, "This snapshot is gone: one is kept two minutes. Take another.")
        return snapshot

    @bp.post("/devices/<serial>/people")
    def upload(serial: str) -> BaseResponse:
        console.device(serial)
        photo = request.files.get("photo")
        data = photo.read(UPLOAD_MAX_BYTES + 1) if photo is not None else b""
        if not data:
            console.say("refused", "Choose a photo to upload.")
        elif len(data) > UPLOAD_MAX_BYTES:
            console.say("refused", f"The photo is over {UPLOAD_MAX_BYTES // 2**20} MiB.")
        elif sniff_format(data) is None:
            console.say("refused", "The photo must be a JPEG or PNG file.")
        else:
            enroll(serial, request.form.get("person"), data)
        return to_device(serial)

    @bp.post("/devices/<serial>/snapshot")
    def snapshot(serial: str) -> BaseResponse:
        device = console.device(serial)
        try:
            shot = rt.device_client.snapshot(device.access)
            image = downscale_jpeg(shot.jpeg)  # as enrollment will see it: the boxes fit
            faces = rt.function.inspect(image, trace=request_id())
        except FaceIdError as exc:
            rt.store.add_audit(console.entry("console_snapshot", "error", serial, code=exc.code))
            console.say("error", f"No snapshot: {exc.message}")
            return to_device(serial)
        rt.store.add_audit(console.entry("console_snapshot", "done", serial))
        with Image.open(io.BytesIO(image)) as opened:
            width, height = opened.size
        session = console.session().token
        token = snapshots.put(
            Held(serial, session, image, width, height, list(faces)), group=session
        )
        return redirect(url_for(".snapshot_page", serial=serial, token=token), 303)

    @bp.get("/devices/<serial>/snapshot/<token>")
    def snapshot_page(serial: str, token: str) -> str:
        device = console.device(serial)
        snapshot = held(serial, token)
        boxes = [face.box for face in snapshot.faces]
        usable = len(boxes) == 1 and min(boxes[0][2:]) >= rt.config.policy.min_face_px
        return console.render(
            "snapshot.html",
            device=device,
            token=token,
            snapshot=snapshot,
            usable=usable,
            min_face_px=rt.config.policy.min_face_px,
            names=[p.name for p in rt.store.people(serial)],
        )

    @bp.get("/devices/<serial>/snapshot/<token>/image")
    def snapshot_image(serial: str, token: str) -> Response:
        return Response(held(serial, token).jpeg, mimetype="image/jpeg")

    @bp.post("/devices/<serial>/snapshot/<token>/keep")
    def keep(serial: str, token: str) -> BaseResponse:
        snapshot = held(serial, token, take=True)
        enroll(serial, request.form.get("person"), snapshot.jpeg)
        return to_device(serial)

    @bp.post("/devices/<serial>/snapshot/<token>/discard")
    def discard(serial: str, token: str) -> BaseResponse:
        held(serial, token, take=True)
        console.say("done", "The snapshot was discarded.")
        return to_device(serial)

    @bp.post("/devices/<serial>/photos/<int:ref_id>/remove")
    def remove_photo(serial: str, ref_id: int) -> BaseResponse | str:
        device = console.device(serial)
        found = rt.store.reference_image(serial, ref_id)
        if found is None:
            console.say("refused", "That photo is no longer kept.")
            return to_device(serial)
        person, _ = found
        photos = rt.store.references(serial, person)
        if request.form.get("confirm") != "yes":
            rt.store.add_audit(
                console.entry("console_view_photos", "done", serial, person=person)
            )  # the question shows the photo
            return console.render(
                "confirm.html",
                device=device,
                title="Remove a photo",
                question=f"Remove this photo of {person} from {device.name}?",
                consequence=(
                    f"It is {person}'s only photo: {person} is removed with it."
                    if len(photos) <= 1
                    else f"{person} keeps {len(photos) - 1} other photo(s)."
                ),
                photo=(serial, ref_id),
                action=url_for(".remove_photo", serial=serial, ref_id=ref_id),
                fields={},
                confirm_label="Remove the photo",
            )
        entry = console.entry("console_remove_photo", "done", serial, person=person)
        if rt.store.remove_reference(serial, ref_id, audit=entry):
            console.say("done", f"Removed a photo of {person}.")
        else:
            console.say("refused", "That photo is no longer kept.")
        return to_device(serial)

    @bp.post("/devices/<serial>/people/remove")
    def remove_person(serial: str) -> BaseResponse | str:
        device = console.device(serial)
        # As stored, not as a new name must be: a name kept under older rules is removable too.
        person = request.form.get("person", "")
        if not 0 < len(person) <= STORED_NAME_MAX_LEN:
            raise bad_request("'person' must name an enrolled person")
        photos = rt.store.references(serial, person)
        if request.form.get("confirm") != "yes":
            return console.render(
                "confirm.html",
                device=device,
                title="Remove a person",
                question=f"Remove {person} from {device.name}?",
                consequence=f"Their {len(photos)} photo(s) are deleted; they can no longer log in.",
                photo=None,
                action=url_for(".remove_person", serial=serial),
                fields={"person": person},
                confirm_label=f"Remove {person}",
            )
        entry = console.entry("console_remove_person", "done", serial, person=person)
        if rt.store.remove_person(serial, person, audit=entry):
            console.say("done", f"Removed {person} and their photos from {device.name}.")
        else:
            console.say("refused", f"Nobody named {person} is enrolled on {device.name}.")
        return to_device(serial)
