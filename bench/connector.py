"""What the connector adds to a login: the whole local stack (connector over HTTPS, the function
with the MXFace engine, a fake MXFace process that answers every comparison with a match at once,
simulated devices sending a 1920x1080 snapshot), driven like the macro drives it.

Per verify: the caller's total time (a new HTTPS connection each time, as the macro makes), the
device time (sign-in + snapshot + sign-out) and the function time (the connector's call to the
function), both from the connector's own log line for that request (matched by X-Request-Id).
Connector overhead = total - device - function; "in handler" is the same without HTTP and TLS.

Phases: one device, sequential verifies; then every device at once (one verify each, several
rounds). Targets: overhead p50 <= 20 ms (sequential); no error and no device web session left
open with all devices at once; <= 250 KB sent to the function per verify with one reference.

    .venv/bin/python -m bench.connector [--devices 50] [--sequential 50] [--rounds 3]
                                        [--out bench-connector.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import ssl
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from connector.config import load_config
from connector.faces import downscale_jpeg
from connector.relay import FunctionClient
from devkit.connector_e2e import open_store, sim_stats
from devkit.figures import percentile
from devkit.macro_client import authorization, body_bytes
from devkit.photos import camera_snapshot
from devkit.stack import SimDevice, Stack, start_matching_mxface, start_stack

TARGET_OVERHEAD_P50_MS = 20.0
TARGET_BYTES_PER_VERIFY = 250_000
DEVICE_STAGES = ("signin", "snapshot", "signout")
STAGES = (*DEVICE_STAGES, "prepare")  # as the connector logs them
PERSON = "Grace Hopper"


class Caller:
    """The macro's side: a new HTTPS connection per verify, as the device's HTTP client makes,
    with the trust store loaded once (as a device has it), so the figures are the connector's."""

    def __init__(self, stack: Stack, url: str | None = None) -> None:
        parts = urlsplit(url or stack.connector_url)  # url: another connector of the stack
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 443
        self.context = ssl.create_default_context(cafile=str(stack.ca_path))

    def verify(self, device: SimDevice) -> dict[str, Any]:
        """The caller's time and the answer's facts."""
        body = body_bytes({"serial": device.serial})
        headers = {
            "Authorization": authorization(device.key, "POST", "/v1/verify", device.serial, body),
            "Content-Type": "application/json",
        }
        started = time.perf_counter()
        connection = http.client.HTTPSConnection(
            self.host, self.port, context=self.context, timeout=30
        )
        try:
            connection.request("POST", "/v1/verify", body, headers)
            response = connection.getresponse()
            raw = response.read()
            total_ms = (time.perf_counter() - started) * 1000
        except OSError as exc:
            return {"request_id": None, "status": None, "verdict": None, "code": repr(exc)}
        finally:
            connection.close()
        answer = json.loads(raw) if response.status == 200 else {}
        return {
            "request_id": response.getheader("X-Request-Id"),
            "status": response.status,
            "verdict": answer.get("verdict"),
            "code": answer.get("code"),
            "total_ms": total_ms,
        }


def read_log(log_text: str) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """From the connector's structured log, by request id: the stages_ms of every verify, and
    the reason logged for a failure."""
    stages, reasons = {}, {}
    for line in log_text.splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        trace = str(record.get("trace", "")).rsplit("/", 1)[-1]
        if isinstance(record.get("stages_ms"), dict):
            stages[trace] = record["stages_ms"]
        elif record.get("severity") in ("WARNING", "ERROR"):
            reasons[trace] = str(record.get("message"))
    return stages, reasons


def summarise(name: str, results: list[dict[str, Any]], stack: Stack) -> dict[str, Any]:
    stages, reasons = read_log(stack.connector.stdout())
    errors = [r for r in results if r["status"] != 200 or r["verdict"] != "match"]
    rows: dict[str, list[float]] = {
        k: [] for k in ("total", "device", "function", "overhead", "in_handler", *STAGES)
    }
    for result in results:
        got = stages.get(result["request_id"] or "")
        if result in errors or got is None or "function" not in got:
            continue
        device = sum(got[s] for s in DEVICE_STAGES)
        rows["total"].append(result["total_ms"])
        rows["device"].append(device)
        rows["function"].append(got["function"])
        rows["overhead"].append(result["total_ms"] - device - got["function"])
        rows["in_handler"].append(got["total"] - device - got["function"])
        for stage in STAGES:
            rows[stage].append(got[stage])
    leaked = sum(sim_stats(d)["open_sessions"] for d in stack.devices)
    summary: dict[str, Any] = {
        "phase": name,
        "verifies": len(results),
        "errors": len(errors),
        "errors_seen": sorted(
            {f"{r['code']}: {reasons.get(r['request_id'] or '', '')}" for r in errors}
        ),
        "leaked_sessions": leaked,
    }
    for key, values in rows.items():
        if values:
            summary[f"{key}_p50_ms"] = round(percentile(values, 50), 1)
            summary[f"{key}_p95_ms"] = round(percentile(values, 95), 1)
    return summary


def sequential(stack: Stack, count: int) -> list[dict[str, Any]]:
    caller = Caller(stack)
    return [caller.verify(stack.devices[0]) for _ in range(count)]


def all_at_once(stack: Stack) -> list[dict[str, Any]]:
    """One verify per device, released together."""
    caller = Caller(stack)
    gate = threading.Barrier(len(stack.devices))

    def run(device: SimDevice) -> dict[str, Any]:
        gate.wait()
        return caller.verify(device)

    with ThreadPoolExecutor(len(stack.devices)) as pool:
        return list(pool.map(run, stack.devices))


def bytes_to_function(stack: Stack, snapshot: bytes) -> dict[str, int]:
    """What the relay sends the function for this snapshot and the device's one stored
    reference: the same code the connector runs, against the same function."""
    store = open_store(stack)
    try:
        references = store.references_for(stack.devices[0].serial)
    finally:
        store.close()
    probe = downscale_jpeg(snapshot)
    client = FunctionClient(load_config(stack.config_path).function)
    try:
        result = client.verify(probe, [("r0", image) for _, image in references])
    finally:
        client.close()
    return {
        "snapshot_bytes": len(snapshot),
        "probe_bytes": len(probe),
        "reference_bytes": sum(len(image) for _, image in references),
        "references": len(references),
        "bytes_sent": result.bytes_sent,
    }


def print_table(phases: list[dict[str, Any]]) -> None:
    columns = ("total", "device", "function", "overhead", "in_handler")
    print(f"{'phase':<22} {'n':>4} {'err':>4} {'leak':>4} " + " ".join(f"{c:>15}" for c in columns))
    print(f"{'':<37}" + " ".join(f"{'p50 / p95 ms':>15}" for _ in columns))
    nan = float("nan")
    for p in phases:
        cells = " ".join(
            f"{p.get(f'{c}_p50_ms', nan):>7.1f} /{p.get(f'{c}_p95_ms', nan):>6.1f}" for c in columns
        )
        print(
            f"{p['phase']:<22} {p['verifies']:>4} {p['errors']:>4} {p['leaked_sessions']:>4} "
            + cells
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=50, help="simulated devices (in-process)")
    parser.add_argument("--sequential", type=int, default=50, help="verifies on one device")
    parser.add_argument("--rounds", type=int, default=3, help="rounds with all devices at once")
    parser.add_argument(
        "--noise", type=float, default=6.0, help="sensor noise of the snapshot (std. dev.)"
    )
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()

    key = secrets.token_urlsafe(24)
    snapshot = camera_snapshot(args.noise)
    with tempfile.TemporaryDirectory(prefix="bench-connector-") as folder:
        workdir = Path(folder)
        frame = workdir / "snapshot.jpg"
        frame.write_bytes(snapshot)
        fake = start_matching_mxface(key)
        try:
            stack = start_stack(
                workdir / "stack",
                images=frame,
                devices=args.devices,
                in_process=True,
                function_env={
                    "FACE_ENGINE": "mxface",
                    "MXFACE_API_URL": fake.url,
                    "MXFACE_KEY": key,
                    "MXFACE_KEY_SECRET": None,
                    "THREADS": "64",  # Cloud Run serves up to 80 requests per instance
                },
            )
        except BaseException:
            fake.stop()
            raise
        stack.extra.append(fake)
        try:
            return measure(stack, snapshot, args)
        finally:
            stack.stop()


def measure(stack: Stack, snapshot: bytes, args: argparse.Namespace) -> int:
    for device in stack.devices:
        answer = stack.call("/v1/enroll", device, {"serial": device.serial, "person": PERSON})
        if answer.json().get("result") != "enrolled":
            raise RuntimeError(f"enrolling on {device.serial} failed: {answer.text}")
    sequential(stack, 10)  # warm-up: pools, connections, caches
    phases = [summarise("1 device, sequential", sequential(stack, args.sequential), stack)]
    results: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        results += all_at_once(stack)
    phases.append(summarise(f"{len(stack.devices)} devices at once", results, stack))
    sent = bytes_to_function(stack, snapshot)

    print(
        f"snapshot {sent['snapshot_bytes']} B (1920x1080) -> probe {sent['probe_bytes']} B; "
        f"{sent['references']} reference(s) {sent['reference_bytes']} B; "
        f"{sent['bytes_sent']} B sent to the function per verify"
    )
    print_table(phases)
    stages = ", ".join(f"{k} {phases[0].get(f'{k}_p50_ms')}" for k in STAGES)
    print(
        "device: sign-in + snapshot + sign-out; function: the connector's call to it; overhead: "
        "total - device - function;\nin handler: the same inside the connector (no HTTP/TLS); "
        f"sequential stage p50 (ms): {stages}"
    )
    seq, burst = phases
    targets = {
        "overhead_p50_ms <= 20 (sequential)": seq.get("overhead_p50_ms", 1e9)
        <= TARGET_OVERHEAD_P50_MS,
        "all devices at once: no error": burst["errors"] == 0,
        "all devices at once: no session left open": burst["leaked_sessions"] == 0,
        "bytes to the function per verify <= 250 KB": sent["bytes_sent"] <= TARGET_BYTES_PER_VERIFY,
    }
    for name, met in targets.items():
        print(f"{'meets' if met else 'MISSES'}: {name}")
    for error in sorted({e for p in phases for e in p["errors_seen"]}):
        print(f"error seen: {error}")
    if args.out:
        report = {"phases": phases, "bytes": sent, "targets": targets, "cpus": os.cpu_count()}
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
