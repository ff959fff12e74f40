"""Enrollment bound to identity, a lockout that holds, and only the person in front unlocks
(docs/security.md), through the real connector, the real function (local engine) and simulated
devices: each rule is tried as an attacker would, one device per scenario, where it takes real
faces, real requests at once or the real engine. The rules themselves, case by case, are
tests/test_enrollment_unit.py's and tests/test_verification_unit.py's (in memory)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from devkit.connector_e2e import (
    assert_error,
    enroll,
    open_sessions,
    open_store,
    sim_stats,
    status,
    verify,
    write_jpeg,
)
from devkit.photos import write_frames
from devkit.samples import face_in_shadow, person_in_front, portrait
from devkit.stack import SimDevice, Stack, start_stack

pytestmark = pytest.mark.slow  # starts real processes

GRACE = "Grace Hopper"


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("frames")
    paths = write_frames(folder)
    paths["stranger_in_front"] = write_jpeg(
        folder / "stranger_in_front.jpg", person_in_front("astronaut", "grace", 0.35)
    )
    paths["face_in_shadow"] = write_jpeg(folder / "shadow.jpg", face_in_shadow())
    large = Image.new("RGB", (8000, 6000), (120, 128, 136))  # a 48 MP camera photo
    large.paste(portrait("grace", 1700), (2500, 600))
    paths["grace_48mp"] = write_jpeg(folder / "grace_48mp.jpg", large)
    paths["grace_in_front"] = write_jpeg(
        folder / "grace_in_front.jpg", person_in_front("grace", "astronaut", 0.35)
    )
    return paths


@pytest.fixture(scope="module")
def stack(frames, tmp_path_factory):
    running = start_stack(
        tmp_path_factory.mktemp("stack"), images=frames["grace_hopper"], devices=5, in_process=True
    )
    try:
        for device in running.devices:
            assert enroll(running, device, GRACE)["result"] == "enrolled"
        yield running
    finally:
        running.stop()


@pytest.fixture(autouse=True)
def no_leaked_device_sessions(stack):
    yield
    assert open_sessions(stack.devices) == {}


def show(device: SimDevice, frame: Path) -> None:
    device.control(images=str(frame), black=False)


def people(stack: Stack, device: SimDevice) -> dict[str, int]:
    store = open_store(stack)
    try:
        return {p.name: p.references for p in store.people(device.serial)}
    finally:
        store.close()


def admin_enroll(stack: Stack, device: SimDevice, person: str, image: Path) -> tuple[int, str]:
    return stack.admin(
        "enroll", "--serial", device.serial, "--person", person, "--image", str(image)
    )


def unlock(stack: Stack, device: SimDevice, frames: dict[str, Path]) -> None:
    show(device, frames["grace_hopper"])
    answer = verify(stack, device)
    assert (answer["verdict"], answer["person"]) == ("match", GRACE), answer


# -- who may enroll what ------------------------------------------------------------------------


def test_another_face_cannot_add_itself_under_the_owners_name_and_ends_the_session(stack, frames):
    device = stack.devices[0]
    unlock(stack, device, frames)
    show(device, frames["astronaut"])  # someone else steps in front of the unlocked screen
    answer = enroll(stack, device, GRACE)
    assert (answer["result"], answer["code"]) == ("refused", "not_you")
    assert answer["message"].startswith("Only the person who unlocked")
    assert status(stack, device)["unlocked"] is False
    assert people(stack, device) == {GRACE: 1}
    show(device, frames["grace_hopper"])
    answer = enroll(stack, device, GRACE)  # the session is over: even the owner must unlock
    assert (answer["result"], answer["code"]) == ("refused", "locked")


# -- a lockout that holds ---------------------------------------------------------------------


def test_thirty_verifies_at_once_after_four_failures_take_one_snapshot_then_lock_out(stack, frames):
    device = stack.devices[3]
    show(device, frames["astronaut"])
    for _ in range(4):
        assert verify(stack, device)["code"] == "not_recognized"
    before = sim_stats(device)["snapshots_served"]
    barrier = threading.Barrier(30)

    def attempt(_: int) -> dict:
        barrier.wait()
        return verify(stack, device)

    with ThreadPoolExecutor(30) as pool:
        answers = list(pool.map(attempt, range(30)))
    assert sim_stats(device)["snapshots_served"] - before <= 1
    assert not [a for a in answers if a["verdict"] == "match"]
    codes = sorted(a["code"] for a in answers)
    assert set(codes) <= {"not_recognized", "busy", "locked_out"}, codes
    assert codes.count("not_recognized") <= 1
    assert_error(verify(stack, device), "locked_out")


# -- references that always work ------------------------------------------------------------------


def test_a_photo_whose_face_is_too_dark_to_judge_is_refused_at_enrollment(stack, frames):
    device = stack.devices[4]
    code, output = admin_enroll(stack, device, "In Shadow", frames["face_in_shadow"])
    assert code == 1 and "refused: This photo would not recognise you" in output
    assert "In Shadow" not in people(stack, device)


def test_a_48_megapixel_camera_photo_enrolls_through_the_admin_command(stack, frames):
    device = stack.devices[2]
    code, output = admin_enroll(stack, device, "Grace Large", frames["grace_48mp"])
    assert code == 0, output
    assert people(stack, device)["Grace Large"] == 1


def test_a_planted_unusable_reference_counts_every_stranger_towards_the_lockout(stack, frames):
    device = stack.devices[4]
    store = open_store(stack)
    try:  # forced into the store, past enrollment's check: a photo with no face in it
        store.add_reference(device.serial, "Planted", (frames["no_face"]).read_bytes())
    finally:
        store.close()
    show(device, frames["astronaut"])
    answers = [verify(stack, device) for _ in range(5)]
    assert [a["code"] for a in answers] == ["reference_unusable"] * 5
    assert answers[-1]["retry_after_s"] == 30
    assert_error(verify(stack, device), "locked_out")
    log = stack.connector.stdout()
    assert '"person": "Planted"' in log or '"person":"Planted"' in log


# -- only the person in front ---------------------------------------------------------------------


def test_a_stranger_in_front_of_the_enrolled_person_is_not_let_in(stack, frames):
    device = stack.devices[1]
    show(device, frames["stranger_in_front"])
    answer = verify(stack, device)
    assert (answer["verdict"], answer["code"]) == ("no_match", "not_recognized")


def test_the_enrolled_person_in_front_of_a_stranger_is_let_in(stack, frames):
    device = stack.devices[1]
    show(device, frames["grace_in_front"])
    answer = verify(stack, device)
    assert (answer["verdict"], answer["person"]) == ("match", GRACE)
    stack.call("/v1/lock", device, {"serial": device.serial})
