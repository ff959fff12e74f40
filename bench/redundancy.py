"""What a redundant pair costs and gives: verifies per second, latency and errors of one connector
on SQLite, one on PostgreSQL, and two connectors on one PostgreSQL database, on this machine.

Each run: the function (MXFace engine) against a fake MXFace process that matches every
comparison at once, D simulated devices (one simulator process), a throwaway PostgreSQL server
(devkit/postgres.py). Every device verifies back to back for S seconds, a new HTTPS connection
per verify as the macro makes; with two connectors, half the devices prefer each (as a load
balancer or alternating connectorUrls would spread them). Measured: verifies per second (matches
only), the caller's p50/p95, errors, and the CPU each part used (utime + stime; PostgreSQL's
backends, each in a process group of its own, counted through the postmaster's children), in
cores: the part whose cores come closest to a whole core, or all parts together to the
machine's CPUs, is where the limit is.

    .venv/bin/python -m bench.redundancy [--devices 8] [--seconds 20] [--out-dir bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.connector import PERSON, Caller
from bench.e2e import CLOCK_TICKS
from devkit.figures import percentile
from devkit.photos import camera_snapshot
from devkit.postgres import PostgresServer, start_postgres
from devkit.proc_group import child_pids
from devkit.procs import ServerProcess
from devkit.stack import Stack, prepare, start_matching_mxface, start_stack

WARM_UP_VERIFIES = 5


@dataclass(frozen=True)
class Setup:
    name: str
    connectors: int
    postgres: bool


SETUPS = (
    Setup("1 connector, SQLite", 1, False),
    Setup("1 connector, PostgreSQL", 1, True),
    Setup("2 connectors, 1 PostgreSQL", 2, True),
)


def _stat(pid: int | str) -> tuple[str, list[str]] | None:
    """(command name, fields from the state on) of /proc/PID/stat; None when it is gone."""
    try:
        text = Path("/proc", str(pid), "stat").read_text()
    except OSError:
        return None
    head, _, rest = text.rpartition(")")
    return head.split("(", 1)[1], rest.split()


def _cpu(fields: list[str]) -> float:
    return sum(int(v) for v in fields[11:15]) / CLOCK_TICKS  # utime stime cutime cstime


def group_cpu_by_command(pgid: int) -> dict[str, float]:
    """CPU seconds of the process group `pgid`, HAProxy apart from the Python processes (the
    connector's group holds its front, connector/front.py)."""
    found: dict[str, float] = {}
    for entry in os.scandir("/proc"):
        stat = _stat(entry.name) if entry.name.isdigit() else None
        if stat is not None and int(stat[1][2]) == pgid:
            name = "haproxy" if stat[0] == "haproxy" else ""
            found[name] = found.get(name, 0.0) + _cpu(stat[1])
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` (with its waited-for children) and of its living children."""
    stats = [_stat(member) for member in [pid, *child_pids(pid)]]
    return sum(_cpu(stat[1]) for stat in stats if stat is not None)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle (every process, this bench's and others')."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle) / CLOCK_TICKS


def cpu_now(stack: Stack, postgres: PostgresServer | None, fake: ServerProcess) -> dict[str, float]:
    """CPU seconds so far, by part: each connector, the function, the simulator, the fake MXFace,
    PostgreSQL, and this process (the callers' side of every TLS handshake)."""
    named = {**stack.processes(), "mxface": fake}
    parts: dict[str, float] = {}
    for name, proc in named.items():
        if proc.pid is None:
            continue
        base = name.split("-SIM", 1)[0]  # simulator-SIM0000: the one simulator process
        for command, seconds in group_cpu_by_command(proc.pid).items():
            part = f"{base} {command}".strip()
            parts[part] = parts.get(part, 0.0) + seconds
    if postgres is not None and postgres.process.pid is not None:
        parts["postgres"] = tree_cpu_seconds(postgres.process.pid)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    parts["callers"] = usage.ru_utime + usage.ru_stime
    parts["machine"] = machine_busy_seconds()
    return parts


def hammer(stack: Stack, seconds: float) -> list[dict[str, Any]]:
    """Every device verifies back to back until `seconds` have passed; device i goes to
    connector i modulo their number."""
    callers = [Caller(stack, connector.url) for connector in stack.connectors]
    deadline = time.monotonic() + seconds
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def run(index: int) -> None:
        device, caller = stack.devices[index], callers[index % len(callers)]
        while time.monotonic() < deadline:
            result = caller.verify(device)
            result["connector"] = index % len(callers)
            with lock:
                results.append(result)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(stack.devices))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def measure(
    setup: Setup, args: argparse.Namespace, work: Path, frame: Path, fake: ServerProcess
) -> dict[str, Any]:
    postgres = start_postgres(work / "postgres") if setup.postgres else None
    try:
        env: dict[str, str | None] = {
            "FACE_ENGINE": "mxface",
            "MXFACE_API_URL": fake.url,
            "MXFACE_KEY": fake.env["FAKE_MXFACE_KEY"],
            "MXFACE_KEY_SECRET": None,
        }
        stack = start_stack(
            work / "stack",
            images=frame,
            devices=args.devices,
            shared_simulator=True,
            function_env=env,
            connectors=setup.connectors,
            store_url=postgres.create_database("bench") if postgres else "",
            store_password_ref=postgres.password_ref if postgres else "",
        )
        try:
            prepare(stack, frame, PERSON, WARM_UP_VERIFIES)
            before = cpu_now(stack, postgres, fake)
            started = time.monotonic()
            results = hammer(stack, args.seconds)
            wall = time.monotonic() - started
            after = cpu_now(stack, postgres, fake)
        finally:
            stack.stop()
    finally:
        if postgres is not None:
            postgres.stop()
    ok = [r for r in results if r["status"] == 200 and r["verdict"] == "match"]
    times = [r["total_ms"] for r in ok]
    cores = {part: round((after[part] - before.get(part, 0.0)) / wall, 2) for part in after}
    python = [p for p in cores if p.startswith("connector") and not p.endswith("haproxy")]
    connector_s = sum(after[p] - before.get(p, 0.0) for p in python)
    return {
        "setup": setup.name,
        "devices": args.devices,
        "seconds": round(wall, 1),
        "verifies": len(results),
        "errors": len(results) - len(ok),
        "error_codes": sorted({str(r["code"]) for r in results if r not in ok}),
        "verifies_per_s": round(len(ok) / wall, 1),
        "p50_ms": round(percentile(times, 50), 1) if times else None,
        "p95_ms": round(percentile(times, 95), 1) if times else None,
        "by_connector": [sum(r["connector"] == i for r in ok) for i in range(setup.connectors)],
        "cores": cores,
        "connector_cpu_ms_per_verify": round(1000 * connector_s / max(1, len(ok)), 1),
    }


def limit(run: dict[str, Any], cpus: int) -> str:
    """Where this run's limit is, in words: the machine's CPUs, one process's core, or neither."""
    cores = dict(run["cores"])
    machine = cores.pop("machine")
    part, most = max(cores.items(), key=lambda item: item[1])
    if most >= 0.85 and "haproxy" not in part:
        return f"one core: {part} uses {most:.2f} (one Python process: its GIL)"
    if machine >= 0.85 * cpus:
        return f"the CPUs: {machine:.2f} of {cpus} busy; the most, {part} ({most:.2f})"
    return f"not CPU ({machine:.2f} of {cpus} cores busy): waiting (locks, I/O, the callers)"


def print_table(runs: list[dict[str, Any]], cpus: int) -> None:
    parts = [*sorted({part for run in runs for part in run["cores"]} - {"machine"}), "machine"]
    print(f"{'setup':<28} {'verify/s':>8} {'n':>6} {'err':>4} {'p50 ms':>7} {'p95 ms':>7}")
    for run in runs:
        print(
            f"{run['setup']:<28} {run['verifies_per_s']:>8.1f} {run['verifies']:>6} "
            f"{run['errors']:>4} {run['p50_ms'] or float('nan'):>7.1f} "
            f"{run['p95_ms'] or float('nan'):>7.1f}"
        )
    print(f"\nCPU in cores ({cpus} on this machine; machine: every process on it):")
    widths = [max(8, len(part)) for part in parts]
    print(f"{'setup':<28} " + " ".join(f"{p:>{w}}" for p, w in zip(parts, widths, strict=True)))
    for run in runs:
        cells = " ".join(
            f"{run['cores'].get(p, 0.0):>{w}.2f}" for p, w in zip(parts, widths, strict=True)
        )
        print(f"{run['setup']:<28} {cells}")
    print()
    for run in runs:
        spread = " + ".join(str(n) for n in run["by_connector"])
        print(
            f"{run['setup']}: limit: {limit(run, cpus)}; matches per connector {spread}; "
            f"connector CPU {run['connector_cpu_ms_per_verify']} ms per verify"
        )
        for code in run["error_codes"]:
            print(f"  error seen: {code}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=8, help="devices verifying back to back")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each setup runs")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    cpus = os.cpu_count() or 1
    runs = []
    fake = start_matching_mxface(secrets.token_urlsafe(24))
    try:
        for setup in SETUPS:
            print(f"{setup.name}: running ...", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory(prefix="bench-redundancy-") as folder:
                work = Path(folder)
                frame = work / "snapshot.jpg"
                frame.write_bytes(camera_snapshot())
                runs.append(measure(setup, args, work, frame, fake))
    finally:
        fake.stop()
    print(
        f"{cpus} CPUs; {args.devices} devices verifying back to back for {args.seconds:g} s per "
        "setup, a new HTTPS connection each; fake MXFace matching at once.\n"
    )
    print_table(runs, cpus)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / "redundancy.json"
    out.write_text(json.dumps({"cpus": cpus, "runs": runs}, indent=2) + "\n")
    print(f"written: {out}", file=sys.stderr)
    return 0 if all(run["errors"] == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
