"""Enrollment's own check of a photo, in memory (connector/enrollment.py): a crop is kept only
when the function recognises it as itself, and an update only when it matches the person's photos.
The function is a stand-in here; tests/test_enrollment_rules.py runs the real one."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from faceverify.errors import FaceIdError

from connector.config import PolicyConfig
from connector.enrollment import enroll, held_to, usable_crop
from connector.relay import ReferenceUnusable
from tests.samples import grace_hopper_jpeg

BOX = (161, 137, 216, 216)  # in the picture's own pixels


@dataclass
class Function:
    """Answers inspect with `faces` and verify with `verdict`, or raises `error`."""

    faces: list[tuple[int, int, int, int]] = field(default_factory=lambda: [BOX])
    verdict: str = "match"
    error: FaceIdError | None = None
    calls: list[str] = field(default_factory=list)

    def inspect(self, image: bytes, trace: str | None = None) -> list[tuple[int, int, int, int]]:
        self.calls.append("inspect")
        return self.faces

    def verify(self, probe: bytes, refs: Any, trace: str | None = None, threshold: Any = None):
        self.calls.append(f"verify {[ref_id for ref_id, _ in refs]}")
        if self.error is not None:
            raise self.error
        return SimpleNamespace(verdict=self.verdict)


def runtime(function: Function, references: list[Any] | None = None) -> Any:
    kept = references or []
    store = SimpleNamespace(anchor_of=lambda serial, person: kept[-1][1] if kept else None)
    return SimpleNamespace(
        function=function, config=SimpleNamespace(policy=PolicyConfig()), store=store
    )


@pytest.fixture(scope="module")
def picture() -> bytes:
    return grace_hopper_jpeg()


def refused(call: Any) -> str:
    with pytest.raises(FaceIdError) as caught:
        call()
    return caught.value.code


def test_a_crop_the_function_recognises_as_itself_is_kept(picture):
    function = Function()
    crop = usable_crop(runtime(function), picture, "t" * 32)
    assert crop[:2] == b"\xff\xd8" and function.calls == ["inspect", "verify ['self']"]


@pytest.mark.parametrize(
    "error",
    [
        FaceIdError(422, "no_face", "no face"),
        FaceIdError(422, "face_too_small", "small"),
        ReferenceUnusable("self"),
    ],
)
def test_a_crop_the_function_cannot_use_is_photo_unusable(picture, error):
    assert refused(lambda: usable_crop(runtime(Function(error=error)), picture, "t")) == (
        "photo_unusable"
    )


def test_a_crop_that_does_not_match_itself_is_photo_unusable(picture):
    function = Function(verdict="no_match")
    assert refused(lambda: usable_crop(runtime(function), picture, "t")) == "photo_unusable"


def test_a_function_that_fails_is_its_own_error_not_a_refusal(picture):
    function = Function(error=FaceIdError(503, "engine_unavailable", "down"))
    assert refused(lambda: usable_crop(runtime(function), picture, "t")) == "engine_unavailable"


@pytest.mark.parametrize(
    ("faces", "code"),
    [([], "no_face"), ([BOX, BOX], "several_faces"), ([(0, 0, 40, 40)], "face_too_small")],
)
def test_the_picture_must_hold_one_face_large_enough(picture, faces, code):
    function = Function(faces=faces)
    assert refused(lambda: usable_crop(runtime(function), picture, "t")) == code
    assert function.calls == ["inspect"]


def test_an_update_must_match_the_persons_anchor_photo(picture):
    kept = [("Grace", b"newest"), ("Grace", b"first")]
    function = Function()
    held_to(runtime(function, kept), "S", "Grace", b"crop", "t")
    assert function.calls == ["verify ['anchor']"]
    for stranger in (Function(verdict="no_match"), Function(error=ReferenceUnusable("r0"))):
        assert refused(lambda f=stranger: held_to(runtime(f, kept), "S", "Grace", b"c", "t")) == (
            "not_you"
        )
    assert refused(lambda: held_to(runtime(Function()), "S", "Grace", b"c", "t")) == (
        "new_person_needs_admin"
    )


def test_with_self_enroll_never_the_device_enrolls_nobody_not_even_the_first():
    policy = PolicyConfig(self_enroll="never")
    device = SimpleNamespace(serial="S", name="S", access=None)
    rt = SimpleNamespace(
        config=SimpleNamespace(policy=policy),
        store=SimpleNamespace(people=lambda serial: []),
        device_client=None,  # never reached: the rule decides before any snapshot
    )
    outcome = enroll(rt, device, "First Person", "t")
    assert (outcome.result, outcome.code, outcome.person) == (
        "refused",
        "self_enroll_off",
        "First Person",
    )
