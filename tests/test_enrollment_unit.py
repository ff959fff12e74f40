"""Enrollment's rules in memory (connector/enrollment.py): a real Store in a temporary file and the
in-memory camera, comparator and clock of connector/memory.py. Who may enroll which face under
which name (the first person at an empty device; afterwards only the person whose match opened
the unlocked session, their own name, once per unlock, a face that matches their anchor photo),
and the checks that make every kept photo usable. tests/test_enrollment_rules.py tries the same
rules through the real processes and the real face engine."""

from __future__ import annotations

import pytest
from faceid_core.errors import (
    EngineError,
    FaceError,
    FaceIdError,
    InputError,
    ReferenceUnusable,
    store_unavailable,
)

from connector.enrollment import audit_enrollment, enroll_event, enroll_image, outcome_of
from connector.memory import FACE, MATCH, NO_MATCH
from tests.support.memory_runtime import PICTURE, REQUEST_ID, Rig, camera_jpeg, memory_rig

GRACE = "Grace Hopper"
EILEEN = "Eileen Collins"
#: The function's answers for a usable photo of the person unlocked: the crop matches itself,
#: then their anchor photo.
USABLE_AND_THEIRS = (MATCH, MATCH)


@pytest.fixture
def grace(rig) -> Rig:
    """Grace enrolled (by an administrator); nobody unlocked."""
    rig.admin_adds(GRACE)
    return rig


def unlock(rig: Rig) -> None:
    rig.function.script(rig.match_of(GRACE))
    outcome = rig.verify()
    assert (outcome.verdict, outcome.person) == ("match", GRACE), outcome


def refused(rig: Rig, person: str) -> str | None:
    outcome = rig.enroll(person)
    assert (outcome.result, outcome.person) == ("refused", person), outcome
    return outcome.code


def code_of(call) -> str:
    with pytest.raises(FaceIdError) as caught:
        call()
    return caught.value.code


# --- the first person at an empty device -----------------------------------------------------


def test_the_first_person_at_an_empty_device_enrolls_a_checked_crop(rig):
    rig.function.script(MATCH)  # the crop matches itself
    outcome = rig.enroll(GRACE)
    assert (outcome.result, outcome.code, outcome.person) == ("enrolled", None, GRACE)
    assert outcome.message == f"Photo saved for {GRACE}."
    assert rig.people() == {GRACE: 1}
    assert [(c.kind, c.ids) for c in rig.function.calls] == [("inspect", ()), ("verify", ("self",))]
    (kept,) = rig.store.references_for(rig.serial)
    assert kept.image[:3] == b"\xff\xd8\xff" and len(kept.image) < len(PICTURE) * 2
    assert rig.store.audit(serial=rig.serial)[0].outcome == "enrolled"  # with the photo


def test_with_self_enroll_never_the_device_enrolls_nobody_not_even_the_first(tmp_path):
    rig = memory_rig(tmp_path, 'self_enroll = "never"')
    try:
        assert refused(rig, "First Person") == "self_enroll_off"
        assert rig.camera.snapshots == [] and rig.people() == {}
    finally:
        rig.close()


def test_once_someone_is_enrolled_nobody_enrolls_without_an_unlocked_session(grace):
    assert refused(grace, "Someone Else") == "locked"
    assert refused(grace, GRACE) == "locked"
    assert grace.camera.snapshots == [] and grace.function.calls == []


def test_of_two_first_enrollments_at_once_only_one_is_kept(rig):
    """The store checks "nobody yet" again in its write transaction."""
    rig.function.script(MATCH, MATCH)
    second = []

    def another_first_enrollment(access):
        if not second:  # not again in its own snapshot
            second.append(None)
            second[0] = rig.enroll("Mallory")

    rig.camera.during = another_first_enrollment
    first = rig.enroll(GRACE)
    assert (second[0].result, first.result, first.code) == ("enrolled", "refused", "locked")
    assert rig.people() == {"Mallory": 1}


# --- the unlocked session ----------------------------------------------------------------------


def test_the_owner_updates_their_own_photo_once_per_unlock_in_any_case(grace):
    unlock(grace)
    grace.function.script(*USABLE_AND_THEIRS)
    outcome = grace.enroll("grace HOPPER")
    assert (outcome.result, outcome.person) == ("enrolled", GRACE)  # kept under their name
    assert grace.people() == {GRACE: 2}
    assert not grace.unlocked()
    assert refused(grace, GRACE) == "locked"  # one update per unlock


def test_an_update_must_match_the_persons_anchor_their_first_photo(grace):
    for _ in range(2):
        unlock(grace)
        grace.function.script(*USABLE_AND_THEIRS)
        assert grace.enroll(GRACE).result == "enrolled"
    anchors = [c for c in grace.function.verifies if c.ids == ("anchor",)]
    # Each update compared with the administrator's photo, never with the latest update.
    assert [c.sizes[1] for c in anchors] == [len(PICTURE)] * 2


@pytest.mark.parametrize(
    "answer", [NO_MATCH, ReferenceUnusable("anchor")], ids=["no_match", "anchor_unusable"]
)
def test_another_face_under_the_owners_name_is_not_you_and_ends_the_session(grace, answer):
    unlock(grace)
    grace.function.script(MATCH, answer)  # a usable photo, of someone else
    assert refused(grace, GRACE) == "not_you"
    assert grace.people() == {GRACE: 1}
    assert not grace.unlocked()
    assert refused(grace, GRACE) == "locked"  # even the owner must unlock again


def test_a_new_name_in_an_unlocked_session_needs_an_administrator(grace):
    unlock(grace)
    assert refused(grace, "Mallory") == "new_person_needs_admin"
    assert grace.camera.snapshots == [grace.serial]  # only the verify's: no picture taken
    assert grace.people() == {GRACE: 1}


def test_another_enrolled_persons_name_is_not_you(grace):
    grace.admin_adds(EILEEN)
    unlock(grace)
    assert refused(grace, "eileen  COLLINS") == "not_you"
    assert grace.people() == {GRACE: 1, EILEEN: 1}


def test_an_update_in_flight_when_the_screen_locks_is_not_stored(grace):
    unlock(grace)
    grace.function.script(*USABLE_AND_THEIRS)
    grace.camera.during = lambda access: grace.store.end_unlocked(grace.serial)  # /v1/lock
    assert refused(grace, GRACE) == "session_ended"
    assert grace.people() == {GRACE: 1}


def test_a_session_older_than_unlock_ttl_s_or_from_a_clock_set_back_is_over(grace):
    unlock(grace)
    grace.clock.advance(600)
    assert refused(grace, GRACE) == "locked"
    unlock(grace)
    grace.clock.advance(-1)
    assert refused(grace, GRACE) == "locked"


def test_with_one_photo_per_person_there_is_nothing_to_update(tmp_path):
    rig = memory_rig(tmp_path, "max_references_per_person = 1")
    try:
        rig.admin_adds(GRACE)
        unlock(rig)
        assert refused(rig, GRACE) == "too_many_references"
    finally:
        rig.close()


# --- every photo kept is usable --------------------------------------------------------------


@pytest.mark.parametrize(
    ("faces", "code"),
    [([], "no_face"), ([FACE, FACE], "several_faces"), ([(0, 0, 40, 40)], "face_too_small")],
)
def test_the_picture_must_hold_one_face_large_enough(rig, faces, code):
    rig.function.script_faces(faces)
    assert refused(rig, GRACE) == code
    assert [c.kind for c in rig.function.calls] == ["inspect"]
    assert rig.people() == {}


@pytest.mark.parametrize(
    "answer",
    [
        NO_MATCH,
        FaceError("no_face", "no face"),
        FaceError("face_too_small", "small"),
        ReferenceUnusable("self"),
        InputError("invalid_image", "unreadable"),
    ],
    ids=["no_match", "no_face", "face_too_small", "reference_unusable", "invalid_image"],
)
def test_a_crop_the_function_cannot_recognise_as_itself_is_photo_unusable(rig, answer):
    rig.function.script(answer)
    assert refused(rig, GRACE) == "photo_unusable"
    assert rig.people() == {}


def test_a_picture_of_a_face_too_dark_to_judge_is_its_own_refusal(rig):
    rig.function.script_faces(FaceError("too_dark", "dark"))
    assert refused(rig, GRACE) == "too_dark"


@pytest.mark.parametrize(
    "error",
    [EngineError("engine_unavailable", "down"), store_unavailable("disk full")],
    ids=lambda e: e.code,
)
def test_a_service_that_fails_is_an_error_not_a_refusal(rig, error):
    rig.function.script(error)
    outcome = rig.enroll(GRACE)
    assert (outcome.result, outcome.code, outcome.person) == ("error", error.code, GRACE)


def test_an_unforeseen_failure_is_internal_error(rig):
    def broken() -> str:
        raise RuntimeError("bug")

    outcome = outcome_of(rig.rt, rig.serial, GRACE, REQUEST_ID, broken)
    assert (outcome.result, outcome.code) == ("error", "internal_error")


# --- the administrator's enrollment -----------------------------------------------------------


def test_an_administrator_adds_people_but_not_a_name_that_reads_as_anothers(grace):
    def enroll(person: str) -> str:  # admin enroll: a picture from a file
        return enroll_image(
            grace.rt, grace.serial, person, camera_jpeg(), REQUEST_ID, only_if_empty=False
        )

    grace.function.script(MATCH)
    assert enroll(EILEEN) == EILEEN
    grace.function.script(MATCH)
    assert code_of(lambda: enroll("eileen  collins")) == "name_taken"
    assert grace.people() == {GRACE: 1, EILEEN: 1}
    assert grace.camera.snapshots == []  # from a file, not the camera


# --- what is recorded and told ---------------------------------------------------------------


def test_a_refusal_is_audited_and_its_event_names_the_person_and_code(grace):
    outcome = grace.enroll("Mallory")
    audit_enrollment(grace.rt, REQUEST_ID, grace.serial, "Mallory", outcome)
    entry = grace.store.audit(serial=grace.serial)[0]
    assert (entry.action, entry.outcome, entry.code, entry.person) == (
        "enroll",
        "refused",
        "locked",
        "Mallory",
    )
    event = enroll_event(grace.device, outcome, REQUEST_ID)
    assert (event.kind, event.outcome, event.code, event.person) == (
        "enroll",
        "refused",
        "locked",
        "Mallory",
    )
    assert event.failed and event.message == outcome.message
