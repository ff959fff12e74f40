"""The demo's launcher: `python -m demo up` leaves a working stack behind that `down` stops,
`python -m demo pair` runs its redundant pair through every step, one simulator process can serve
several devices, and the fake MXFace process can be told what to answer (the end-to-end benchmark
relies on both)."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from devkit.macro_client import answer_holds, send
from devkit.procs import REPO, start_module
from devkit.samples import astronaut_jpeg, b64, grace_hopper_jpeg

pytestmark = pytest.mark.slow  # starts real processes


def demo(
    command: str, folder: Path, *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FACEID_DEMO_DIR": str(folder)}
    env.pop("DEMO_PHOTOS", None)
    return subprocess.run(
        [sys.executable, "-m", "demo", command, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_make_demo_provisions_its_device_and_the_pushed_macro_logs_the_person_in(tmp_path):
    ran = demo("run", tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    provisioned = next(line for line in ran.stderr.splitlines() if "SIM0000" in line)
    assert provisioned.split()[:2] == ["SIM0000", "ok"] and "reported in" in provisioned
    pushed = (tmp_path / "run" / "device-macros" / "faceid.js").read_text()
    assert "  pushId: ''," not in pushed and "  deviceKey: ''," not in pushed
    assert "unlocked  match" in ran.stdout and "Every scenario behaved as expected." in ran.stdout


def test_demo_pair_shares_a_lockout_fails_over_and_opens_a_room_with_a_one_time_code(tmp_path):
    # The macro reports the code's use again every 60 s once no connector took it: about 70 s.
    ran = demo("pair", tmp_path, timeout=420)
    assert ran.returncode == 0, ran.stdout + ran.stderr[-5000:]
    rows = [line.split() for line in ran.stdout.splitlines() if re.match(r"^ {3}\d  ", line)]
    assert [(row[0], row[-1]) for row in rows] == [(str(n), "passed") for n in range(1, 8)]
    assert "Every step behaved as expected." in ran.stdout
    narrated = ran.stderr.split("Step 4:")[1]
    assert '"Unlock": unlocked, “Welcome, Grace Hopper” (answered by B: match)' in narrated
    assert "Unlocked with an unlock code." in narrated and "already used" in narrated
    password = (tmp_path / "pair" / "postgres.password").read_text()
    assert password not in ran.stdout + ran.stderr


def test_demo_up_leaves_a_working_stack_after_it_exits_and_down_stops_it(tmp_path):
    started = demo("up", tmp_path)
    try:
        assert started.returncode == 0, started.stderr
        described = json.loads((tmp_path / "stack.json").read_text())
        assert (tmp_path / "stack.json").stat().st_mode & 0o077 == 0, "the key file is private"
        connector, device = described["connector"], described["device"]
        assert device["key"] not in started.stdout and "python -m demo call" in started.stdout
        called = demo("call", tmp_path, "verify")
        assert called.returncode == 0, called.stderr
        assert "signature holds" in called.stdout and '"verdict": "match"' in called.stdout
        key = base64.urlsafe_b64decode(device["key"] + "=")
        answer = send(
            connector["url"], "/v1/verify", key, device["serial"], {"serial": device["serial"]},
            verify=connector["ca"],
        )  # fmt: skip
        assert answer_holds(key, answer)
        assert answer.json()["verdict"] == "match"
        assert answer.json()["person"] == device["enrolled"]
        logs = Path(described["logs"])
        assert '"verify match"' in (logs / "connector.stdout.log").read_text()
    finally:
        stopped = demo("down", tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    pids = described["pids"].values()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids)
    assert not (tmp_path / "stack.json").exists()


def test_one_simulator_process_serves_several_devices_each_with_its_own_sessions(tmp_path):
    ca = tmp_path / "sim.pem"
    args = ["--account", "admin:pw", "--devices", "2", "--cert-out", str(ca)]
    with start_module("devkit.simulator", args, ready_line=r"^https://\S+") as sim:
        deadline = time.monotonic() + 10
        while len(urls := re.findall(r"^https://\S+", sim.stdout(), re.M)) < 2:
            assert time.monotonic() < deadline, sim.stdout()
            time.sleep(0.02)
        token = re.search(r"^control-token (\S+)", sim.stdout(), re.M).group(1)
        signed_in = requests.post(
            urls[0] + "/web/signin/open",
            data={"username": "admin", "password": "pw"},
            verify=str(ca),
            timeout=5,
        )
        assert signed_in.status_code == 200
        opened = [
            requests.get(
                url + "/_sim/stats", headers={"X-Sim-Control": token}, verify=str(ca), timeout=5
            ).json()["open_sessions"]
            for url in urls
        ]
    assert urls[0] != urls[1]
    assert opened == [1, 0]


def test_fake_mxface_process_matches_any_pair_and_finds_the_given_face_box():
    key = secrets.token_urlsafe(16)
    args = ["--verify", "match", "--face-box", "400,105,165,190"]
    with start_module("devkit.fakes.mxface", args, env={"FAKE_MXFACE_KEY": key}) as fake:
        headers = {"Subscriptionkey": key}
        pair = {"encoded_image1": b64(grace_hopper_jpeg()), "encoded_image2": b64(astronaut_jpeg())}
        compared = requests.post(fake.url, json=pair, headers=headers, timeout=5).json()
        detect_url = fake.url.replace("/verify", "/detect")
        found = requests.post(
            detect_url, json={"encoded_image": pair["encoded_image2"]}, headers=headers, timeout=5
        ).json()
    assert compared["matchedFaces"][0]["matchResult"] == 1
    assert [face["faceRectangle"] for face in found["faces"]] == [
        {"x": 400, "y": 105, "width": 165, "height": 190}
    ]
