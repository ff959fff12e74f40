"""How long a verify takes when the device trickles its answer: the whole local stack (connector
over HTTPS under gunicorn, the function, in-process simulated devices), each device sending its
snapshot answer (status line, headers and body) one byte every 100 ms. requests' read timeout
is per socket read, so without an enforced deadline such an answer holds a verify for as long as
the answer lasts (minutes for a camera frame); with it, the verify answers device_unreachable
after the device budget, then the sign-out.

Per verify: the caller's time, as the macro sees it, and the connector's own total from its log
line for that request. Targets: max <= budget_s + sign-out budget + 1 s, every answer
device_unreachable, and no device web session left open.

    .venv/bin/python -m bench.device_deadline [--devices 4] [--rounds 3] [--trickle-ms 100]
                                              [--budget-s 6] [--out bench-device-deadline.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.connector import read_log
from connector.runtime import SIGNOUT_BUDGET_S
from devkit.connector_e2e import open_store, sim_stats
from devkit.figures import percentile
from devkit.photos import write_frames
from devkit.stack import SimDevice, Stack, start_stack

SLACK_S = 1.0
PERSON = "Bench Person"


def enroll_directly(stack: Stack, reference: bytes) -> None:
    """One reference per device, written into the store: the verify must reach the snapshot,
    and never gets as far as comparing (the snapshot does not arrive)."""
    store = open_store(stack)
    try:
        for device in stack.devices:
            store.add_reference(device.serial, PERSON, reference)
    finally:
        store.close()


def verify(stack: Stack, device: SimDevice) -> dict[str, Any]:
    started = time.perf_counter()
    response = stack.call("/v1/verify", device, {"serial": device.serial}, timeout=120)
    total_ms = (time.perf_counter() - started) * 1000
    answer = response.json() if response.status_code == 200 else {}
    return {
        "request_id": response.headers.get("X-Request-Id"),
        "status": response.status_code,
        "code": answer.get("code"),
        "total_ms": total_ms,
    }


def all_at_once(stack: Stack) -> list[dict[str, Any]]:
    gate = threading.Barrier(len(stack.devices))

    def run(device: SimDevice) -> dict[str, Any]:
        gate.wait()
        return verify(stack, device)

    with ThreadPoolExecutor(len(stack.devices)) as pool:
        return list(pool.map(run, stack.devices))


def measure(stack: Stack, args: argparse.Namespace) -> int:
    for device in stack.devices:
        assert device.simulator is not None
        device.simulator.set_mode(
            trickle_ms=args.trickle_ms, trickle_on=["snapshot"], trickle_headers=True
        )
    results: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        results += all_at_once(stack)
    stages, _ = read_log(stack.connector.stdout())
    totals = [r["total_ms"] for r in results]
    in_connector = [
        stages[r["request_id"]]["total"]
        for r in results
        if "total" in stages.get(r["request_id"] or "", {})
    ]
    bound_ms = (args.budget_s + SIGNOUT_BUDGET_S + SLACK_S) * 1000
    summary: dict[str, Any] = {
        "verifies": len(results),
        "devices_at_once": len(stack.devices),
        "trickle_ms": args.trickle_ms,
        "budget_s": args.budget_s,
        "signout_budget_s": SIGNOUT_BUDGET_S,
        "total_p50_ms": round(percentile(totals, 50), 1),
        "total_max_ms": round(max(totals), 1),
        "in_connector_p50_ms": round(percentile(in_connector, 50), 1) if in_connector else None,
        "codes": sorted({str(r["code"]) for r in results}),
        "left_open": sum(sim_stats(d)["open_sessions"] for d in stack.devices),
        "cpus": os.cpu_count(),
    }
    print(
        f"{summary['verifies']} verifies ({len(stack.devices)} devices at once, "
        f"{args.rounds} rounds), each device trickling its snapshot answer one byte every "
        f"{args.trickle_ms:g} ms; budget {args.budget_s:g} s + sign-out {SIGNOUT_BUDGET_S:g} s"
    )
    print(
        f"verify time as the macro sees it: p50 {summary['total_p50_ms']:.0f} ms, "
        f"max {summary['total_max_ms']:.0f} ms (in the connector: p50 "
        f"{summary['in_connector_p50_ms']} ms); codes {summary['codes']}; "
        f"device web sessions left open: {summary['left_open']}"
    )
    targets = {
        f"max <= {bound_ms / 1000:g} s (budget + sign-out + {SLACK_S:g} s)": max(totals)
        <= bound_ms,
        "every answer is device_unreachable": summary["codes"] == ["device_unreachable"],
        "no device web session left open": summary["left_open"] == 0,
    }
    for name, met in targets.items():
        print(f"{'meets' if met else 'MISSES'}: {name}")
    if args.out:
        args.out.write_text(json.dumps({**summary, "targets": targets}, indent=2) + "\n")
    return 0 if all(targets.values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=4, help="simulated devices (in-process)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds with all devices at once")
    parser.add_argument("--trickle-ms", type=float, default=100.0, help="gap between bytes")
    parser.add_argument("--budget-s", type=float, default=6.0, help="device_defaults.budget_s")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-deadline-") as folder:
        frames = write_frames(Path(folder) / "frames")
        stack = start_stack(
            Path(folder) / "stack",
            images=frames["grace_hopper"],
            devices=args.devices,
            in_process=True,
            device_defaults={"budget_s": args.budget_s},
        )
        try:
            enroll_directly(stack, frames["grace_hopper"].read_bytes())
            return measure(stack, args)
        finally:
            stack.stop()


if __name__ == "__main__":
    sys.exit(main())
