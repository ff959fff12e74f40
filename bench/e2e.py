"""A login end to end on this machine: the connector over HTTPS, the real function process, device
simulator processes, with the local engine and with MXFace (a fake that answers every comparison
with a match after a fixed delay, 300 ms by default).

Per engine: one device, N verifies in sequence; then D devices (one simulator process serving
them all) verifying at once. Measured per verify: the time from the macro's request to its
verdict (the macro's exact request, a new HTTPS connection each time, as the device makes), each
stage from the connector's log line for that request, CPU seconds of the connector, function and
simulator processes (utime + stime of each process group, exited children included), bytes sent
to the function (counted on the wire by a relay between the connector and the function; one-device
runs only), and device web sessions opened and closed (simulator counters).

Targets: MXFace, one device: p50 <= 400 ms, p95 <= 600 ms; local engine, one device:
p50 <= 600 ms; D devices at once: no error and every session closed.

    .venv/bin/python -m bench.e2e [--verifies 50] [--devices 50] [--delay-ms 300]
                                  [--engines local mxface] [--function-threads N]
                                  [--out-dir bench/results]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.connector import PERSON, all_at_once, sequential
from devkit.connector_e2e import session_totals
from devkit.figures import percentile
from devkit.photos import camera_snapshot
from devkit.procs import ServerProcess
from devkit.stack import Stack, connector_records, prepare, start_matching_mxface, start_stack

STAGES = ("signin", "snapshot", "signout", "prepare", "function", "total")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WARM_UP_VERIFIES = 5


class WireCounter:
    """A TCP relay in front of the function that counts the bytes the connector sends it."""

    def __init__(self) -> None:
        self.sent = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._target: tuple[str, int] = ("127.0.0.1", 0)

    def route(self, function_url: str) -> str:
        """For start_stack(route_function=...): relay to `function_url`, give the relay's URL."""
        parts = urlsplit(function_url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 80)
        threading.Thread(target=self._accept, daemon=True).start()
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                if counted:
                    with self._lock:
                        self.sent += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()


def group_cpu_seconds(pgid: int) -> float:
    """utime + stime (with waited-for children) of every process in the group `pgid`."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5, pgrp
            ticks += sum(int(v) for v in fields[11:15])  # fields 14-17: utime stime cutime cstime
    return ticks / CLOCK_TICKS


def cpu_by_role(stack: Stack) -> dict[str, float]:
    roles: dict[str, float] = {}
    for name, proc in stack.processes().items():
        role = name.split("-", 1)[0]
        if proc.pid is not None and role in ("connector", "function", "simulator"):
            roles[role] = roles.get(role, 0.0) + group_cpu_seconds(proc.pid)
    return roles


@dataclass
class Phase:
    engine: str
    name: str
    results: list[dict[str, Any]]
    cpu: dict[str, float]
    bytes_to_function: int | None
    opened: int
    closed: int
    left_open: int
    wall_s: float

    def summary(self, stack: Stack) -> dict[str, Any]:
        stages = {
            record["trace"]: record["stages_ms"]
            for record in connector_records(stack)
            if "trace" in record and isinstance(record.get("stages_ms"), dict)
        }
        ok = [r for r in self.results if r["status"] == 200 and r["verdict"] == "match"]
        n = len(self.results)
        out: dict[str, Any] = {
            "engine": self.engine,
            "phase": self.name,
            "verifies": n,
            "errors": n - len(ok),
            "error_codes": sorted({str(r["code"]) for r in self.results if r not in ok}),
            "wall_s": round(self.wall_s, 2),
            "cpu_s_per_verify": {k: round(v / n, 4) for k, v in self.cpu.items()},
            "bytes_to_function_per_verify": (
                None if self.bytes_to_function is None else round(self.bytes_to_function / n)
            ),
            "sessions_opened": self.opened,
            "sessions_closed": self.closed,
            "sessions_left_open": self.left_open,
        }
        out["cpu_s_per_verify"]["total"] = round(sum(self.cpu.values()) / n, 4)
        series: dict[str, list[float]] = {"macro": [r["total_ms"] for r in ok]}
        for result in ok:
            for key, value in stages.get(result["request_id"] or "", {}).items():
                series.setdefault(key, []).append(value)
        for key, values in series.items():
            out[f"{key}_p50_ms"] = round(percentile(values, 50), 1)
            out[f"{key}_p95_ms"] = round(percentile(values, 95), 1)
        return out


def measure(
    stack: Stack,
    engine: str,
    name: str,
    run: Callable[[], list[dict[str, Any]]],
    counter: WireCounter | None,
) -> dict[str, Any]:
    before_cpu, before_sessions = cpu_by_role(stack), session_totals(stack)
    before_bytes = counter.sent if counter else 0
    started = time.perf_counter()
    results = run()
    wall = time.perf_counter() - started
    after_cpu, after_sessions = cpu_by_role(stack), session_totals(stack)
    phase = Phase(
        engine=engine,
        name=name,
        results=results,
        cpu={role: after_cpu[role] - before_cpu.get(role, 0.0) for role in after_cpu},
        bytes_to_function=counter.sent - before_bytes if counter else None,
        opened=after_sessions["signins"] - before_sessions["signins"],
        closed=after_sessions["signouts"] - before_sessions["signouts"],
        left_open=after_sessions["open_sessions"],
        wall_s=wall,
    )
    return phase.summary(stack)


def run_engine(engine: str, args: argparse.Namespace, work: Path, frame: Path) -> list[dict]:
    key = secrets.token_urlsafe(24)
    fake: ServerProcess | None = None
    env: dict[str, str | None] = {"FACE_ENGINE": "local"}
    if engine == "mxface":
        fake = start_matching_mxface(key, delay_ms=args.delay_ms)
        env = {
            "FACE_ENGINE": "mxface",
            "MXFACE_API_URL": fake.url,
            "MXFACE_KEY": key,
            "MXFACE_KEY_SECRET": None,
        }
    if args.function_threads:
        env["THREADS"] = str(args.function_threads)
    phases = []
    try:
        counter = WireCounter()
        stack = start_stack(
            work / f"{engine}-one", images=frame, function_env=env, route_function=counter.route
        )
        try:
            prepare(stack, frame, PERSON, WARM_UP_VERIFIES)
            phases.append(
                measure(
                    stack,
                    engine,
                    "1 device, sequential",
                    lambda: sequential(stack, args.verifies),
                    counter,
                )
            )
        finally:
            stack.stop()
            counter.close()
        stack = start_stack(
            work / f"{engine}-many",
            images=frame,
            devices=args.devices,
            shared_simulator=True,
            function_env=env,
        )
        try:
            prepare(stack, frame, PERSON, WARM_UP_VERIFIES)
            name = f"{args.devices} devices at once"
            phases.append(measure(stack, engine, name, lambda: all_at_once(stack), None))
        finally:
            stack.stop()
    finally:
        if fake is not None:
            fake.stop()
    return phases


def targets(phases: list[dict[str, Any]]) -> dict[str, bool]:
    by = {(p["engine"], p["phase"].split(",")[0]): p for p in phases}
    found: dict[str, bool] = {}
    if one := by.get(("mxface", "1 device")):
        found["MXFace, 1 device: p50 <= 400 ms"] = one.get("macro_p50_ms", 1e9) <= 400
        found["MXFace, 1 device: p95 <= 600 ms"] = one.get("macro_p95_ms", 1e9) <= 600
    if one := by.get(("local", "1 device")):
        found["local engine, 1 device: p50 <= 600 ms"] = one.get("macro_p50_ms", 1e9) <= 600
    for p in phases:
        if "at once" in p["phase"]:
            found[f"{p['engine']}, {p['phase']}: no error"] = p["errors"] == 0
        found[f"{p['engine']}, {p['phase']}: every session closed"] = (
            p["sessions_opened"] == p["sessions_closed"] and p["sessions_left_open"] == 0
        )
    return found


def _pair(p: dict[str, Any], key: str) -> str:
    if f"{key}_p50_ms" not in p:
        return "-"
    return f"{p[f'{key}_p50_ms']:.0f} / {p[f'{key}_p95_ms']:.0f}"


def markdown(phases: list[dict[str, Any]], setup: str) -> str:
    head = (
        "| engine | run | verifies | errors | macro p50 / p95 | sign-in | snapshot | sign-out "
        "| prepare | function | connector | CPU s / verify (connector + function + simulator) "
        "| bytes to function / verify | sessions opened / closed |"
    )
    lines = [setup, "", head, "|" + "---|" * 14]
    for p in phases:
        cpu = p["cpu_s_per_verify"]
        cpu_text = (
            f"{cpu['total']:.3f} ({cpu.get('connector', 0):.3f} + {cpu.get('function', 0):.3f} "
            f"+ {cpu.get('simulator', 0):.3f})"
        )
        sent = p["bytes_to_function_per_verify"]
        lines.append(
            f"| {p['engine']} | {p['phase']} | {p['verifies']} | {p['errors']} "
            f"| {_pair(p, 'macro')} | "
            + " | ".join(_pair(p, stage) for stage in STAGES)
            + f" | {cpu_text} | {'-' if sent is None else f'{sent:,}'} "
            f"| {p['sessions_opened']} / {p['sessions_closed']} |"
        )
    lines += [
        "",
        "Times in ms, p50 / p95. macro: from the macro's request to its verdict (new HTTPS "
        "connection each time); the stages come from the connector's log line of each request; "
        "connector: the whole verify inside the connector.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verifies", type=int, default=50, help="sequential verifies, 1 device")
    parser.add_argument("--devices", type=int, default=50, help="devices verifying at once")
    parser.add_argument("--delay-ms", type=float, default=300.0, help="the fake MXFace's delay")
    parser.add_argument(
        "--function-threads", type=int, help="the function's THREADS (default: CPUs x 4)"
    )
    parser.add_argument(
        "--engines", nargs="+", choices=("local", "mxface"), default=["mxface", "local"]
    )
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)

    phases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as folder:
        work = Path(folder)
        frame = work / "snapshot.jpg"
        frame.write_bytes(camera_snapshot())
        for engine in args.engines:
            print(f"{engine}: running ...", file=sys.stderr, flush=True)
            phases += run_engine(engine, args, work, frame)
    setup = (
        f"{os.cpu_count()} CPUs; 1920x1080 snapshot, one reference; fake MXFace answers after "
        f"{args.delay_ms:g} ms; function: functions-framework, 1 worker, "
        f"{args.function_threads or (os.cpu_count() or 1) * 4} threads."
    )
    table = markdown(phases, setup)
    met = targets(phases)
    print(table)
    for name, ok in met.items():
        print(f"{'meets ' if ok else 'MISSES'}  {name}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    report = {"setup": setup, "phases": phases, "targets": met}
    (args.out_dir / "e2e.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out_dir / "e2e.md").write_text(table)
    print(f"written: {args.out_dir / 'e2e.json'}, {args.out_dir / 'e2e.md'}", file=sys.stderr)
    return 0 if all(met.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
