"""Two connectors on one PostgreSQL database behind the real macro (demo/drive_macro.mjs, with
`connectorUrls`): they are one fleet. Failures spread over both lock a device out after
policy.max_failures exactly as one connector does; a request one accepted the other refuses as
replayed; kill -9 of the preferred one in the middle of logins costs each device at most one
attempt and unlocks nobody who should not be; restarted, it serves again from the same state.

Each device runs in a Node process of its own; the comparison is the fake MXFace's: a probe that
looks like the astronaut's frame (the stranger) does not match, any other does."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from devkit.fakes.mxface import FakeMXFace, Reply, match, no_match
from devkit.macro_client import answer_holds, key_text, new_nonce, send
from devkit.macro_driver import MacroDriver
from devkit.photos import write_frames
from devkit.postgres import PostgresServer
from devkit.proc_group import crash
from devkit.procs import ServerProcess
from devkit.stack import SimDevice, Stack, start_stack

pytestmark = pytest.mark.slow  # PostgreSQL, two connectors, the function and Node

PERSON = "Grace Hopper"
MAX_FAILURES = 3
#: Long enough that no lockout of these tests ends while they run, even on a busy machine.
LOCKOUT_S = 600
#: Short device and function deadlines: the hold a killed connector leaves on a device (its
#: attempt lease, runtime.attempt_lease_s) then ends within about 13 s.
BUDGET_S = 3
FUNCTION_TIMEOUT_S = 3
#: How long a device may wait, after the kill, to be let in again: the lease plus a busy machine.
REJOIN_WAIT_S = 120.0
#: The simulated camera's delay in the kill test: each verify is in flight for a while.
SLOW_SNAPSHOT_S = 0.6
MATCH = ("match", None)
BUSY = ("error", "busy")


@dataclass
class Pair:
    stack: Stack
    frames: dict[str, Path]

    @property
    def urls(self) -> list[str]:
        return [str(connector.url) for connector in self.stack.connectors]

    def device(self, index: int, frame: str) -> SimDevice:
        """Device `index` with `frame` in front of its camera."""
        device = self.stack.devices[index]
        device.control(images=str(self.frames[frame]))
        return device


def thumbnail(image: bytes) -> bytes:
    """8 x 8 grey levels: a resized, re-encoded copy of a frame keeps them within a few steps."""
    return Image.open(io.BytesIO(image)).convert("L").resize((8, 8)).tobytes()


def refusing(stranger: bytes) -> Callable[[bytes, bytes], Reply]:
    """The comparison: no match when either image is the `stranger` frame (the probe is the
    whole frame, downscaled), a match otherwise."""
    theirs = thumbnail(stranger)

    def rule(*images: bytes) -> Reply:
        for image in images:
            ours = thumbnail(image)
            if sum(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < 4 * len(ours):
                return no_match()
        return match()

    return rule


@pytest.fixture(scope="module")
def pair(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    workdir = tmp_path_factory.mktemp("pair")
    frames = write_frames(workdir / "frames")
    url = postgres.create_database("redundant_pair")
    with FakeMXFace() as mxface:
        mxface.verify_rule = refusing(frames["astronaut"].read_bytes())
        stack = start_stack(
            workdir / "stack",
            images=frames["grace_hopper"],
            devices=6,
            in_process=True,  # the simulated devices outlive every connector crash
            function_env={
                "FACE_ENGINE": "mxface",
                "MXFACE_API_URL": mxface.verify_url,
                "MXFACE_KEY": mxface.key,
                "MXFACE_KEY_SECRET": None,
            },
            policy={"max_failures": MAX_FAILURES, "lockout_base_s": LOCKOUT_S},
            device_defaults={"budget_s": BUDGET_S},
            function_timeout_s=FUNCTION_TIMEOUT_S,
            store_url=url,
            store_password_ref=postgres.password_ref,
            connectors=2,
        )
        try:
            for device in stack.devices:
                body = {"serial": device.serial, "person": PERSON}
                assert stack.call("/v1/enroll", device, body).json()["result"] == "enrolled"
            yield Pair(stack, frames)
        finally:
            stack.stop()


@contextmanager
def macro(pair: Pair, device: SimDevice, urls: list[str], name: str) -> Iterator[MacroDriver]:
    """The real macro on `device`, SETTINGS.connectorUrls = `urls`, reported in."""
    driver = MacroDriver(pair.stack, pair.stack.workdir / f"macro-{name}.log")
    try:
        ready = driver.ask(
            {"serial": device.serial, "connectorUrls": urls, "deviceKey": key_text(device.key)}
        )
        assert (ready["report"]["http"] or {}).get("status") == 200, ready
        yield driver
    finally:
        driver.close()


def verdict(outcome: dict[str, Any]) -> tuple[str | None, str | None]:
    """What the connector answered a tap on "Unlock": (verdict, code)."""
    answer = outcome.get("answer") or {}
    return answer.get("verdict"), answer.get("code")


def answered_by(connectors: list[ServerProcess], outcome: dict[str, Any]) -> int:
    """Which connector (index) logged the request behind `outcome`."""
    request_id = (outcome.get("http") or {}).get("request_id")
    assert request_id, outcome
    for index, connector in enumerate(connectors):
        for line in connector.stdout().splitlines():
            if line.startswith("{") and json.loads(line).get("trace") == request_id:
                return index
    raise AssertionError(f"no connector logged request {request_id}")


def test_failures_spread_over_both_connectors_lock_out_after_max_failures_as_with_one(
    pair: Pair,
) -> None:
    spread, alone = pair.device(0, "astronaut"), pair.device(1, "astronaut")
    first, second = pair.urls
    taps = MAX_FAILURES + 2
    with (
        macro(pair, spread, [first, second], "spread-ab") as prefers_first,
        macro(pair, spread, [second, first], "spread-ba") as prefers_second,
        macro(pair, alone, [first], "alone") as one_connector,
    ):
        spread_taps = [
            (prefers_first, prefers_second)[i % 2].ask({"press": "login"}) for i in range(taps)
        ]
        alone_taps = [one_connector.ask({"press": "login"}) for _ in range(taps)]
    answers = [verdict(outcome) for outcome in spread_taps]
    assert answers == [verdict(outcome) for outcome in alone_taps]
    assert answers[:MAX_FAILURES] == [("no_match", "not_recognized")] * MAX_FAILURES
    assert answers[MAX_FAILURES:] == [("error", "locked_out")] * (taps - MAX_FAILURES)
    assert [answered_by(pair.stack.connectors, o) for o in spread_taps] == [0, 1] * (taps // 2) + [
        0
    ]
    assert all(outcome["screen"]["lock"] == "locked" for outcome in spread_taps + alone_taps)


def test_a_request_one_connector_accepted_the_other_refuses_as_replayed(pair: Pair) -> None:
    device = pair.device(4, "grace_hopper")
    for accepts, replayed_to in (pair.urls, pair.urls[::-1]):
        ts, nonce, body = int(time.time()), new_nonce(), {"serial": device.serial}
        sent = [
            send(
                url,
                "/v1/status",
                device.key,
                device.serial,
                body,
                verify=str(pair.stack.ca_path),
                ts=ts,
                nonce=nonce,
            )
            for url in (accepts, replayed_to, accepts)
        ]
        assert sent[0].status_code == 200 and answer_holds(device.key, sent[0])
        for again in sent[1:]:
            assert again.status_code == 401, again.text
            assert again.json()["error"]["code"] == "replayed", again.text
            assert answer_holds(device.key, again)  # a signed refusal: the macro fails over never


def test_kill_9_of_the_preferred_connector_costs_a_device_at_most_one_attempt_and_no_unlock(
    pair: Pair,
) -> None:
    stack = pair.stack
    owner, stranger = pair.device(2, "grace_hopper"), pair.device(3, "astronaut")
    taps: dict[str, list[tuple[float, dict[str, Any]]]] = {owner.serial: [], stranger.serial: []}
    tapped_at: dict[str, float | None] = {owner.serial: None, stranger.serial: None}
    stop = threading.Event()
    problems: list[BaseException] = []

    def keep_tapping(driver: MacroDriver, device: SimDevice) -> None:
        """A person at the device: tap "Unlock", read the screen, lock it again if it opened."""
        try:
            while not stop.is_set():
                tapped_at[device.serial] = time.monotonic()
                outcome = driver.ask({"press": "login"})
                tapped_at[device.serial] = None
                taps[device.serial].append((time.monotonic(), outcome))
                if outcome["screen"]["lock"] != "locked":
                    driver.ask({"press": "lock"})
                time.sleep(0.25)  # a person reads the screen before tapping again
        except BaseException as exc:  # seen by the test thread
            problems.append(exc)

    def wait_for(done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + REJOIN_WAIT_S
        while not done():
            assert not problems, problems
            assert time.monotonic() < deadline, f"no {what} within {REJOIN_WAIT_S} s: {taps}"
            time.sleep(0.01)

    def both_mid_verify() -> bool:
        """Each device has been answered once and waits now for its snapshot (slow_s)."""
        now = time.monotonic()
        return all(
            taps[serial] and started is not None and now - started > SLOW_SNAPSHOT_S / 3
            for serial, started in tapped_at.items()
        )

    for device in (owner, stranger):
        device.control(slow_s=SLOW_SNAPSHOT_S, slow_on=["snapshot"])
    with (
        macro(pair, owner, pair.urls, "owner") as at_owner,
        macro(pair, stranger, pair.urls, "stranger") as at_stranger,
    ):
        threads = [
            threading.Thread(target=keep_tapping, args=(at_owner, owner)),
            threading.Thread(target=keep_tapping, args=(at_stranger, stranger)),
        ]
        for thread in threads:
            thread.start()
        try:
            wait_for(both_mid_verify, "moment when both devices wait for a verify")
            killed_at = time.monotonic()  # what is answered from now on may have been cut short
            crash(stack.connector)  # the preferred one, in the middle of both

            def owner_matched_since_kill() -> bool:
                return any(at > killed_at and verdict(o) == MATCH for at, o in taps[owner.serial])

            wait_for(owner_matched_since_kill, "match for the owner after the kill")
            wait_for(lambda: sum(at > killed_at for at, _ in taps[stranger.serial]) >= 3, "taps")
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
            for device in (owner, stranger):
                device.control(slow_s=0)
            stack.restart_connector("connector-after-kill")
    assert not problems, problems
    owner_taps, stranger_taps = taps[owner.serial], taps[stranger.serial]
    assert {verdict(o) for at, o in owner_taps if at < killed_at} == {MATCH}
    # The attempt the kill cut short is lost (the other connector refuses the same request as
    # replayed); the device is then busy while the dead attempt's hold lasts; then a match.
    after = [verdict(o) for at, o in owner_taps if at > killed_at]
    assert len([answer for answer in after if answer not in (MATCH, BUSY)]) <= 1, after
    assert all(o["screen"]["lock"] == "locked" for _, o in stranger_taps), stranger_taps
    refused = {("no_match", "not_recognized"), ("error", "locked_out"), BUSY}
    assert len([o for _, o in stranger_taps if verdict(o) not in refused]) <= 1, stranger_taps


def test_a_restarted_connector_rejoins_and_serves_from_the_shared_state(pair: Pair) -> None:
    stack = pair.stack
    locked, owner = pair.device(5, "astronaut"), pair.device(4, "grace_hopper")
    crash(stack.connector)
    # While the first is down, the second keeps the fleet: it serves, and it locks a device out.
    for _ in range(MAX_FAILURES):
        answer = send(
            pair.urls[1],
            "/v1/verify",
            locked.key,
            locked.serial,
            {"serial": locked.serial},
            verify=str(stack.ca_path),
        )
        assert answer.json()["verdict"] == "no_match", answer.text
    stack.restart_connector("connector-rejoined")
    with (
        macro(pair, owner, pair.urls, "rejoined-owner") as at_owner,
        macro(pair, locked, pair.urls, "rejoined-locked") as at_locked,
    ):
        welcome = at_owner.ask({"press": "login"})
        refused = at_locked.ask({"press": "login"})
    assert verdict(welcome) == MATCH and welcome["screen"]["lock"] == "unlocked"
    assert verdict(refused) == ("error", "locked_out")
    assert answered_by(stack.connectors, welcome) == answered_by(stack.connectors, refused) == 0
