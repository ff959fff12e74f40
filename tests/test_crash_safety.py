"""The connector killed with SIGKILL (all its gunicorn processes at once) while enrollments are in
flight, round after round, and started again on the same configuration and store: the store
opens, passes SQLite's integrity check, holds every enrollment whole or not at all (a person with
exactly their encrypted reference, which decrypts; no person without a photo, no photo without a
person), keeps every enrollment it confirmed, its audit log reads back row by row, and the
restarted connector serves signed verify answers again.

The stack is the real one (connector over HTTPS under gunicorn, the function under
functions-framework with the MXFace engine, simulated devices); the fake MXFace matches every
comparison, so each verify unlocks its device and its owner may add a photo of themselves."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from devkit.connector_e2e import enroll, open_sessions, open_store, status, verify
from devkit.fakes.mxface import FakeMXFace, match
from devkit.photos import write_frames
from devkit.proc_group import crash
from devkit.stack import SimDevice, Stack, start_stack

pytestmark = pytest.mark.slow  # starts real processes

DEVICES = 8  # one enrollment per device and round: 1 + 8 rounds stay within 10 photos each
#: A round starts one enrollment every STAGGER (in multiples of one enrollment's duration
#: measured on this machine), so at the kill they are at every stage: taking the snapshot,
#: asking the function, writing the store, answering.
STAGGER = 0.25
#: When the connector dies, in the same unit, counted from the round's first enrollment: from
#: before any could finish to after most have.
KILL_AT = (0.5, 0.9, 1.3, 1.7, 2.1, 2.8, 6.0)
#: The last round kills only once a first enrollment has answered (and the rest are in flight),
#: so that one kill always follows a confirmed enrollment, however slow a busy machine is.
AFTER_A_FIRST_ANSWER = None
ROUNDS = (*KILL_AT, AFTER_A_FIRST_ANSWER)
ANSWER_WAIT_S = 60.0
FIRST = "Grace Hopper"
ENROLL_OUTCOMES = {"enrolled", "refused", "error"}


@dataclass
class Attempt:
    serial: str
    person: str
    answer: dict[str, Any] | None  # None: the connector died before answering


@dataclass
class World:
    stack: Stack
    enroll_s: float  # one enrollment, warm, alone


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    workdir: Path = tmp_path_factory.mktemp("crash")
    frames = write_frames(workdir / "frames")
    with FakeMXFace() as mxface:
        mxface.verify_rule = lambda _a, _b: match()
        stack = start_stack(
            workdir / "stack",
            images=frames["grace_hopper"],
            devices=DEVICES,
            in_process=True,  # the simulators outlive every connector crash
            function_env={
                "FACE_ENGINE": "mxface",
                "MXFACE_API_URL": mxface.verify_url,
                "MXFACE_KEY": mxface.key,
                "MXFACE_KEY_SECRET": None,
            },
            policy={"max_references_per_person": 10},  # every photo of every round is kept
        )
        try:
            durations = []
            for device in stack.devices:  # nobody enrolled yet: the first enrollment is allowed
                started = time.perf_counter()
                assert enroll(stack, device, FIRST)["result"] == "enrolled"
                durations.append(time.perf_counter() - started)
            yield World(stack, min(durations))
        finally:
            stack.stop()


def enroll_and_crash(
    stack: Stack, people: list[tuple[SimDevice, str]], every_s: float, kill_after_s: float | None
) -> list[Attempt]:
    """Start one enrollment every `every_s`, SIGKILL the connector `kill_after_s` after the
    first (None: once any has answered, all of them started), and collect what each caller got:
    an answer, or none. Enrollments that would start after the kill are not attempted."""

    def call(device: SimDevice, person: str) -> dict[str, Any] | None:
        try:
            response = stack.call("/v1/enroll", device, {"serial": device.serial, "person": person})
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
            return None  # no answer, or the connector died in the middle of it
        assert response.status_code == 200, response.text
        return dict(response.json())

    started = time.perf_counter()
    with ThreadPoolExecutor(len(people)) as pool:
        futures = {}
        for i, (device, person) in enumerate(people):
            if kill_after_s is not None and i * every_s >= kill_after_s:
                break
            time.sleep(max(0.0, started + i * every_s - time.perf_counter()))
            futures[device.serial, person] = pool.submit(call, device, person)
        if kill_after_s is None:
            wait(futures.values(), timeout=ANSWER_WAIT_S, return_when=FIRST_COMPLETED)
        else:
            time.sleep(max(0.0, started + kill_after_s - time.perf_counter()))
        crash(stack.connector)
        return [Attempt(serial, person, f.result()) for (serial, person), f in futures.items()]


def read_only_look(db: Path) -> tuple[dict[tuple[str, str], int], list[tuple[Any, ...]]]:
    """The store as the crash left it, through a read-only connection: SQLite's own checks,
    then no person without a photo, no photo without a person, no photo left half written.
    Returns the references per (serial, person) and the raw audit rows."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        without_photo = conn.execute(
            "SELECT p.serial, p.name FROM people p "
            "LEFT JOIN reference_images r ON r.person_id = p.id WHERE r.id IS NULL"
        ).fetchall()
        assert without_photo == [], "people without a reference photo"
        without_person = conn.execute(
            "SELECT r.id FROM reference_images r "
            "LEFT JOIN people p ON p.id = r.person_id WHERE p.id IS NULL"
        ).fetchall()
        assert without_person == [], "reference photos without a person"
        blank = conn.execute(
            "SELECT id FROM reference_images WHERE length(nonce) != 12 OR length(ciphertext) <= 16"
        ).fetchall()
        assert blank == [], "reference photos left without their nonce or ciphertext"
        counts = conn.execute(
            "SELECT p.serial, p.name, count(r.id) FROM people p "
            "JOIN reference_images r ON r.person_id = p.id GROUP BY p.id"
        ).fetchall()
        audit = conn.execute(
            "SELECT id, time, request_id, serial, action, outcome, code, person, score, stages_ms "
            "FROM audit ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    return {(serial, name): count for serial, name, count in counts}, audit


def assert_audit_rows_parse(rows: list[tuple[Any, ...]]) -> None:
    for row_id, at, request_id, serial, action, outcome, code, person, score, stages in rows:
        assert isinstance(row_id, int) and isinstance(at, float), row_id
        assert isinstance(action, str) and action, row_id
        for text in (request_id, serial, outcome, code, person):
            assert text is None or isinstance(text, str), row_id
        assert score is None or isinstance(score, float), row_id
        if stages is not None:
            assert isinstance(json.loads(stages), dict), row_id
        if action == "enroll":
            assert outcome in ENROLL_OUTCOMES, row_id


def decrypt_everything(stack: Stack, counts: dict[tuple[str, str], int]) -> list[Any]:
    """Open the store as the connector does (key check included), decrypt every reference photo
    (each is bound to its row: a damaged one raises) and read the whole audit log back."""
    store = open_store(stack)
    try:
        for device in stack.devices:
            references = store.references_for(device.serial, limit=10**6)
            stored = sum(n for (serial, _), n in counts.items() if serial == device.serial)
            assert len(references) == stored
            assert all(image.startswith(b"\xff\xd8\xff") for _, image in references)
        return list(store.audit(limit=10**6))
    finally:
        store.close()


def test_sigkill_during_enrollments_leaves_every_enrollment_whole_or_absent(world):
    stack = world.stack
    attempts: list[Attempt] = []
    figures = []
    for round_no, factor in enumerate(ROUNDS, start=1):
        for device in stack.devices:  # serves again, and unlocks for the next enrollment
            assert verify(stack, device)["verdict"] == "match"
        people = [(device, FIRST) for device in stack.devices]  # the owner adds a photo
        kill_after_s = None if factor is None else factor * world.enroll_s
        done = enroll_and_crash(stack, people, STAGGER * world.enroll_s, kill_after_s)
        attempts += done

        counts, audit_rows = read_only_look(stack.workdir / "faceid.db")
        assert_audit_rows_parse(audit_rows)
        audit = decrypt_everything(stack, counts)
        assert len(audit) == len(audit_rows)
        assert {person for _, person in counts} == {FIRST}, counts  # nobody else appeared
        for device in stack.devices:
            mine = [a for a in attempts if a.serial == device.serial]
            confirmed = sum(a.answer is not None for a in mine)
            for attempt in mine:
                if attempt.answer is not None:
                    assert attempt.answer["result"] == "enrolled", attempt.answer
            photos = counts[(device.serial, FIRST)]
            # Every confirmed photo kept; an interrupted one kept or not, never half.
            assert 1 + confirmed <= photos <= 1 + len(mine), (device.serial, photos)
            audited = sum(
                e.serial == device.serial and e.action == "enroll" and e.outcome == "enrolled"
                for e in audit
            )
            # The photo and its audit row are one transaction: neither outlives the other.
            assert audited == photos, "enrollments and their audit rows disagree"

        stack.restart_connector(f"connector-{round_no}")
        interrupted = [a for a in done if a.answer is None]
        stored_now = sum(counts.values()) - DEVICES
        confirmed_so_far = sum(a.answer is not None for a in attempts)
        figures.append(
            {
                "round": round_no,
                "kill_after_ms": None if kill_after_s is None else round(kill_after_s * 1000),
                "confirmed": len(done) - len(interrupted),
                "interrupted": len(interrupted),
                "interrupted_but_stored_so_far": stored_now - confirmed_so_far,
                "device_sessions_left_open": sum(open_sessions(stack.devices).values()),
            }
        )
    print(f"\none enrollment alone: {world.enroll_s * 1000:.0f} ms")
    for row in figures:
        print(json.dumps(row))
    assert any(row["interrupted"] for row in figures), "no kill caught an enrollment in flight"
    assert any(row["confirmed"] for row in figures), "no enrollment finished before a kill"

    health = requests.get(f"{stack.connector_url}/healthz", verify=str(stack.ca_path), timeout=10)
    assert health.status_code == 200 and health.json()["checks"]["store"] == "ok"
    store = open_store(stack)
    try:
        for device in stack.devices:
            assert verify(stack, device)["verdict"] == "match"
            stored = store.count_people(device.serial)
            assert status(stack, device)["enrolled_people"] == stored
    finally:
        store.close()
