"""The connector under load: fifty devices asking at once, four verifications each, three rounds
(600 verifications), against the real stack (connector over HTTPS under gunicorn, the function
under functions-framework with the MXFace engine, one simulator process serving every device, a
fake MXFace process that matches every comparison at once). Every answer must be a signed 200
match, every device web session the connector opens must be closed, and the connector's memory
must stop growing once warm: its resident memory after round 3 within MAX_RSS_GROWTH of round 2.

The figures (latency p50/p95, resident memory per round, device sessions) are printed
(`pytest -s`) and written to load.json in the test's temporary folder."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from devkit.connector_e2e import session_totals, verify
from devkit.figures import percentile
from devkit.photos import camera_snapshot
from devkit.proc_group import group_rss_bytes
from devkit.stack import SimDevice, Stack, prepare, start_matching_mxface, start_stack

pytestmark = pytest.mark.slow  # starts real processes

DEVICES = 50
VERIFIES_PER_DEVICE = 4  # 200 verifications per round
ROUNDS = 3
#: Allowed growth of the connector's resident memory from round 2 to round 3: the larger of
#: 10 % and 16 MiB. Round 1 fills pools and caches; after it the allocator's arenas swing by
#: about 10 MiB between rounds (seven rounds measured: 167, 175, 180, 178, 177, 171, 172 MiB).
#: Keeping one snapshot (about 130 KB) per verify would exceed it.
MAX_RSS_GROWTH_FRACTION = 0.10
MAX_RSS_GROWTH_BYTES = 16 * 2**20
MIB = 2**20


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return Path(tmp_path_factory.mktemp("load"))


@pytest.fixture(scope="module")
def stack(workdir) -> Iterator[Stack]:
    """Fifty devices, each with Grace Hopper enrolled, warm."""
    frame = workdir / "snapshot.jpg"
    frame.write_bytes(camera_snapshot())
    key = secrets.token_urlsafe(24)
    fake = start_matching_mxface(key)
    try:
        started = start_stack(
            workdir / "stack",
            images=frame,
            devices=DEVICES,
            shared_simulator=True,
            function_env={
                "FACE_ENGINE": "mxface",
                "MXFACE_API_URL": fake.url,
                "MXFACE_KEY": key,
                "MXFACE_KEY_SECRET": None,
            },
        )
    except BaseException:
        fake.stop()
        raise
    started.extra.append(fake)
    try:
        prepare(started, frame, "Grace Hopper")
        yield started
    finally:
        started.stop()


def one_round(stack: Stack) -> tuple[list[float], list[str]]:
    """Every device released at once, each verifying VERIFIES_PER_DEVICE times in a row, every
    answer checked as the macro checks it. Latencies in ms, and what went wrong."""
    gate = threading.Barrier(len(stack.devices))

    def device_run(device: SimDevice) -> tuple[list[float], list[str]]:
        times, errors = [], []
        gate.wait()
        for _ in range(VERIFIES_PER_DEVICE):
            started = time.perf_counter()
            try:
                answer = verify(stack, device)
            except (AssertionError, requests.RequestException) as exc:
                errors.append(f"{device.serial}: {type(exc).__name__}: {exc}"[:300])
                continue
            times.append((time.perf_counter() - started) * 1000)
            if answer["verdict"] != "match":
                errors.append(f"{device.serial}: {answer['verdict']} {answer['code']}")
        return times, errors

    with ThreadPoolExecutor(len(stack.devices)) as pool:
        runs = list(pool.map(device_run, stack.devices))
    return [t for times, _ in runs for t in times], [e for _, errors in runs for e in errors]


def test_fifty_devices_at_once_get_signed_matches_close_every_session_and_hold_memory(
    stack, workdir
):
    before = session_totals(stack)
    rounds: list[dict[str, Any]] = []
    errors: list[str] = []
    for round_no in range(1, ROUNDS + 1):
        started = time.perf_counter()
        latencies, round_errors = one_round(stack)
        wall = time.perf_counter() - started
        errors += round_errors
        rounds.append(
            {
                "round": round_no,
                "verifies": DEVICES * VERIFIES_PER_DEVICE,
                "errors": len(round_errors),
                "wall_s": round(wall, 2),
                "p50_ms": round(percentile(latencies, 50), 1) if latencies else None,
                "p95_ms": round(percentile(latencies, 95), 1) if latencies else None,
                "connector_rss_mib": round(group_rss_bytes(stack.connector.pid or 0) / MIB, 1),
            }
        )
    after = session_totals(stack)
    verifies = ROUNDS * DEVICES * VERIFIES_PER_DEVICE
    figures = {
        "devices": DEVICES,
        "rounds": rounds,
        "device_sessions": {
            "opened": after["signins"] - before["signins"],
            "closed": after["signouts"] - before["signouts"],
            "open_now": after["open_sessions"],
        },
        "errors_seen": errors[:20],
    }
    (workdir / "load.json").write_text(json.dumps(figures, indent=2) + "\n")
    print()
    for row in rounds:
        print(json.dumps(row))
    print(json.dumps(figures["device_sessions"]), f"-> {workdir / 'load.json'}")

    assert errors == []
    assert figures["device_sessions"] == {"opened": verifies, "closed": verifies, "open_now": 0}
    round2, round3 = (row["connector_rss_mib"] * MIB for row in rounds[1:3])
    allowed = max(round2 * MAX_RSS_GROWTH_FRACTION, MAX_RSS_GROWTH_BYTES)
    assert round2 > 0 and round3 - round2 <= allowed, rounds
