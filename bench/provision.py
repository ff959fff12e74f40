"""Provisioning and onboarding on this machine (issue 18): the connector over HTTPS, the real
function process (local engine), N simulated devices in one simulator process, and the admin
commands run as an administrator runs them (a new CLI process each time, start-up included).

Measured:
- `admin provision --all --json`: wall time; each device's time (the gap between its
  `provision` audit entry and the one before: they run one after another; the first device also
  pays the CLI's start-up, so it is shown on its own); the wait for the pushed macro's report
  (its "reported in (X s)"), and the part of that wait after the report had arrived (the command
  looks every REPORT_POLL_S). Each device's simulated macro runtime (devkit/pushed_macro.py) looks
  at its device every 0.1 s over a kept-alive connection and reports in as soon as the runtime
  restarts.
- The same command again: nothing to change but the macro.
- `admin add-device` of a new in-process device (certificate, sign-in, status, option key,
  snapshot, face detection, then the write; removed again after each run, untimed), `admin
  test-device`, and `admin check-config` (a command that only reads the file: the CLI's own
  start-up) for comparison: R runs each.
- Reload: from connector.config.add_device writing a new device block to the running
  connector's "configuration reloaded" record naming it. The log is read rather than probed with
  signed requests, which the failed-authentication brake would count; the writes are spread over
  the file watcher's period.

    .venv/bin/python -m bench.provision [--devices 20] [--runs 5] [--out-dir bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from itertools import pairwise
from pathlib import Path
from typing import Any

import requests

from connector.config import add_device
from connector.device import TlsPolicy
from connector.provisioning import REPORT_POLL_S
from connector.reload import SETTLE_S, WATCH_EVERY_S
from devkit.connector_e2e import open_store
from devkit.figures import percentile
from devkit.photos import camera_snapshot
from devkit.pushed_macro import reporter, reporting_runtime
from devkit.simulator import DeviceSimulator
from devkit.stack import SimDevice, Stack, connector_records, start_stack, warm_up

RUNTIME_POLL_S = 0.1
REPORTED_IN = re.compile(r"^reported in \((\d+(?:\.\d+)?) s\)$")
#: What `done` says that differs on every run (sizes, times): left out of the steps listed.
VARYING_STEPS = ("macro saved", "reported in")
NEW_ACCOUNT = "faceid"


def start_runtime(runtimes: ExitStack, stack: Stack, device: SimDevice) -> threading.Event:
    """The device's macro runtime, until `runtimes` closes: once restarted, the pushed macro
    reports in with a signed POST /v1/status, with the key provisioning wrote into it. The event
    is set once it has read the device's macros (a restart before that would go unseen)."""
    ready = threading.Event()
    session = requests.Session()  # kept alive: N runtimes polling must not load the simulator
    runtimes.callback(session.close)

    def read_macros() -> dict[str, Any]:
        macros = device.macros(session)
        ready.set()
        return macros

    report = reporter(stack.connector_url, str(stack.ca_path), device.serial)
    runtimes.enter_context(reporting_runtime(read_macros, report, poll_s=RUNTIME_POLL_S))
    return ready


def audit_times(stack: Stack, since: float) -> dict[str, dict[str, float]]:
    """serial -> action -> time of the last `provision` and `macro_report` entry since `since`."""
    store = open_store(stack)
    try:
        entries = store.audit(limit=100_000)
    finally:
        store.close()
    found: dict[str, dict[str, float]] = {}
    for entry in reversed(entries):  # oldest first: the last one wins
        if entry.action in ("provision", "macro_report") and (entry.time or 0) >= since:
            found.setdefault(str(entry.serial), {})[entry.action] = float(entry.time or 0)
    return found


def reported_in(done: list[str]) -> float:
    """The seconds provision waited for the macro's report, from its "reported in (X s)"."""
    return next(float(m[1]) for step in done if (m := REPORTED_IN.match(step)))


def provision_all(stack: Stack, name: str) -> dict[str, Any]:
    since = time.time()
    started = time.perf_counter()
    command = stack.start_admin(
        "provision", "--all", "--json", "--admin-password-ref", stack.device_admin_ref
    )
    code = command.wait(60 + 10 * len(stack.devices))
    wall = time.perf_counter() - started
    outcomes = [json.loads(line) for line in command.stdout().splitlines() if line[:1] == "{"]
    failed = [f"{o['serial']}: {o['failed']}: {o['why']}" for o in outcomes if not o["ok"]]
    if code != 0 or failed or len(outcomes) != len(stack.devices):
        details = "\n".join(failed) or command.stderr()[-3000:]
        raise RuntimeError(f"provision --all ({name}) exited with {code}:\n{details}")
    times = audit_times(stack, since)
    outcomes.sort(key=lambda o: times[o["serial"]]["provision"])
    ends = [times[o["serial"]]["provision"] for o in outcomes]
    durations = [b - a for a, b in pairwise([since, *ends])]
    waits = [reported_in(o["done"]) for o in outcomes]
    after_report = [
        times[o["serial"]]["provision"] - times[o["serial"]]["macro_report"] for o in outcomes
    ]
    rest, rest_waits = durations[1:], waits[1:]
    steps = {step for o in outcomes for step in o["done"] if not step.startswith(VARYING_STEPS)}
    return {
        "run": name,
        "devices": len(outcomes),
        "wall_s": round(wall, 2),
        "first_device_with_cli_start_s": round(durations[0], 2),
        "per_device_p50_s": round(percentile(rest, 50), 3),
        "per_device_p95_s": round(percentile(rest, 95), 3),
        "report_wait_p50_s": percentile(rest_waits, 50),
        "report_wait_p95_s": percentile(rest_waits, 95),
        "report_wait_share": round(sum(rest_waits) / sum(rest), 3),
        "after_report_p50_s": round(percentile(after_report, 50), 3),
        "after_report_p95_s": round(percentile(after_report, 95), 3),
        "steps_done": sorted(steps),
    }


def timed_runs(
    runs: int, once: Callable[[], None], between: Callable[[], None] | None = None
) -> list[float]:
    """Seconds of each of `runs` calls of `once`; `between` runs untimed after each but the last."""
    seconds = []
    for i in range(runs):
        started = time.perf_counter()
        once()
        seconds.append(time.perf_counter() - started)
        if between is not None and i < runs - 1:
            between()
    return seconds


def admin_ok(stack: Stack, *args: str) -> None:
    code, output = stack.admin(*args)
    if code != 0:
        raise RuntimeError(f"admin {args[0]} exited with {code}:\n{output[-3000:]}")


def add_device_runs(stack: Stack, frame: Path, work: Path, runs: int) -> list[float]:
    """`admin add-device` of the same new device `runs` times (removed in between)."""
    password = secrets.token_urlsafe(18)
    ref = work / "new-device.password"
    ref.write_text(password)
    ref.chmod(0o600)
    with DeviceSimulator({NEW_ACCOUNT: password}, frame, serial="NEWROOM1") as sim:
        args = ("--host", sim.host, "--username", NEW_ACCOUNT, "--password-ref", f"file:{ref}")
        seconds = timed_runs(
            runs,
            lambda: admin_ok(stack, "add-device", *args, "--yes", "--json"),
            lambda: admin_ok(stack, "remove-device", "--serial", sim.serial),
        )
    return seconds


def reload_runs(stack: Stack, runs: int) -> list[float]:
    """From a new device block written to the running connector's reload record naming it."""
    like = stack.devices[0]
    seconds = []
    for i in range(runs):
        time.sleep(i / runs * WATCH_EVERY_S)  # the writes fall across the watcher's period
        serial = f"RELOAD{i}"
        add_device(
            stack.config_path,
            serial=serial,
            host=like.url.removeprefix("https://"),
            tls=TlsPolicy(fingerprint_sha256=like.fingerprint),
        )
        started = time.perf_counter()
        deadline = started + 30
        while not any(
            r.get("message") == "configuration reloaded" and serial in r.get("devices_added", [])
            for r in connector_records(stack)
        ):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the connector logged no reload adding {serial} in 30 s")
            time.sleep(0.02)
        seconds.append(time.perf_counter() - started)
    return seconds


def spread(seconds: list[float]) -> dict[str, Any]:
    return {
        "runs": len(seconds),
        "p50_s": round(percentile(seconds, 50), 3),
        "max_s": round(max(seconds), 3),
        "all_s": [round(s, 3) for s in seconds],
    }


def measure(stack: Stack, frame: Path, work: Path, runs: int) -> dict[str, Any]:
    warm_up(stack, frame)  # the face check of add-device and test-device finds warm networks
    with ExitStack() as runtimes:
        ready = [start_runtime(runtimes, stack, device) for device in stack.devices]
        if not all(seen.wait(10) for seen in ready):
            raise RuntimeError("a simulated macro runtime could not read its device's macros")
        print("provision --all ...", file=sys.stderr, flush=True)
        provision = [provision_all(stack, "first run"), provision_all(stack, "again")]
    print("reload ...", file=sys.stderr, flush=True)
    commands = {"reload (block written -> served)": spread(reload_runs(stack, runs))}
    time.sleep(WATCH_EVERY_S + SETTLE_S)  # that reload's own work is done
    print("add-device, test-device, check-config ...", file=sys.stderr, flush=True)
    serial = stack.devices[0].serial
    commands["admin add-device (new device)"] = spread(add_device_runs(stack, frame, work, runs))
    commands["admin test-device"] = spread(
        timed_runs(runs, lambda: admin_ok(stack, "test-device", "--serial", serial, "--json"))
    )
    commands["admin check-config (CLI start-up)"] = spread(
        timed_runs(runs, lambda: admin_ok(stack, "check-config", "--json"))
    )
    return {"provision": provision, "commands": commands}


def print_table(report: dict[str, Any]) -> None:
    print(report["setup"])
    print()
    print(
        f"{'provision --all':<20} {'wall s':>7} {'1st dev s':>10} {'per device p50/p95 s':>21} "
        f"{'report wait p50/p95 s':>22} {'share':>6} {'after report p50 s':>19}"
    )
    for p in report["provision"]:
        print(
            f"{p['run']:<20} {p['wall_s']:>7.2f} {p['first_device_with_cli_start_s']:>10.2f} "
            f"{p['per_device_p50_s']:>13.2f} / {p['per_device_p95_s']:<5.2f} "
            f"{p['report_wait_p50_s']:>14.2f} / {p['report_wait_p95_s']:<5.2f} "
            f"{p['report_wait_share']:>6.0%} {p['after_report_p50_s']:>19.2f}"
        )
    for p in report["provision"]:
        print(f"  {p['run']}: {'; '.join(p['steps_done'])}")
    print(
        "1st dev: CLI start-up + the first device; per device: the others; report wait: part of "
        "each device's time (share: of the total),\nof which 'after report' passed once the "
        f"report was in (the command looks every {REPORT_POLL_S:g} s)."
    )
    print()
    print(f"{'command':<36} {'runs':>4} {'p50 s':>7} {'max s':>7}")
    for name, figures in report["commands"].items():
        print(f"{name:<36} {figures['runs']:>4} {figures['p50_s']:>7.2f} {figures['max_s']:>7.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=20, help="devices provisioned (>= 2)")
    parser.add_argument("--runs", type=int, default=5, help="runs of each single command")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    if args.devices < 2 or args.runs < 1:
        parser.error("--devices must be at least 2 and --runs at least 1")

    with tempfile.TemporaryDirectory(prefix="bench-provision-") as folder:
        work = Path(folder)
        frame = work / "snapshot.jpg"
        frame.write_bytes(camera_snapshot())
        print(f"starting a stack with {args.devices} devices ...", file=sys.stderr, flush=True)
        stack = start_stack(
            work / "stack", images=frame, devices=args.devices, shared_simulator=True
        )
        try:
            figures = measure(stack, frame, work, args.runs)
        finally:
            stack.stop()
    setup = (
        f"{os.cpu_count()} CPUs; {args.devices} devices in one simulator process, each with a "
        f"simulated macro runtime looking every {RUNTIME_POLL_S:g} s; local engine; "
        f"config watched every {WATCH_EVERY_S:g} s."
    )
    report = {"setup": setup, **figures}
    print_table(report)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / "provision.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
