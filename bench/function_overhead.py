"""What the comparison function adds on top of MXFace: latency and throughput of the real
functions-framework process against a fake MXFace process that answers at once.

A ~100 KB JPEG probe and one reference go to `POST /` from 1 and 8 concurrent clients. The
function's overhead is measured two ways: its latency minus the time the fake spent on each
call (read at the fake), and its latency minus the latency of sending the same images to the
fake directly. Target: overhead p50 <= 5 ms.

    .venv/bin/python -m bench.function_overhead [--requests 300] [--concurrency 1 8]
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from devkit.fakes.mxface import STATS_PATH, VERIFY_PATH
from devkit.figures import percentile
from devkit.procs import start_function, start_module
from devkit.samples import astronaut_jpeg, b64, grace_hopper_jpeg

TARGET_P50_MS = 5.0
HEADER = (
    f"{'clients':>7} {'p50':>7} {'p95':>7} {'req/s':>6} {'fake p50':>8} {'direct p50':>10} "
    f"{'overhead p50':>15} {'p50 - fake':>14} {'in handler':>11}   (ms)"
)
LEGEND = """overhead p50: function p50 minus the p50 of sending the same images straight to the fake
  (what putting the function in the path costs a caller); p50 - fake: minus the time the fake
  spent per call; in handler: elapsed_ms - engine_ms from the function's own logs."""
NOOP_SOURCE = """import functions_framework


@functions_framework.http
def noop(request):
    request.get_data()
    return {}
"""


def run(send: Callable[[requests.Session], None], total: int, clients: int) -> tuple[list, float]:
    """`total` calls of `send` spread over `clients` threads; (latencies in ms, wall seconds)."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_client = [total // clients + (i < total % clients) for i in range(clients)]

    def client(count: int) -> None:
        with requests.Session() as session:
            session.trust_env = False
            for _ in range(count):
                started = time.perf_counter()
                send(session)
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    latencies.append(elapsed)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, per_client))
    return latencies, time.perf_counter() - started


def fake_service_ms(stats_url: str, skip: int) -> list[float]:
    """How long the fake spent on each call after the first `skip`."""
    stats = requests.get(stats_url, timeout=10).json()
    return [r["service_ms"] for r in stats["requests"][skip:]]


def poster(url: str, body: bytes, headers: dict[str, str]) -> Callable[[requests.Session], None]:
    def send(session: requests.Session) -> None:
        response = session.post(url, data=body, headers=headers, timeout=30)
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:200]}")

    return send


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--delay-ms", type=float, default=0.0, help="the fake's answer time")
    args = parser.parse_args()

    probe, reference = astronaut_jpeg(), grace_hopper_jpeg()
    key = secrets.token_urlsafe(24)
    fake = start_module(
        "devkit.fakes.mxface", ["--delay-ms", str(args.delay_ms)], env={"FAKE_MXFACE_KEY": key}
    )
    env = {
        "FACE_ENGINE": "mxface",
        "MXFACE_API_URL": fake.url,
        "MXFACE_KEY": key,
        "MXFACE_KEY_SECRET": None,
    }
    function = None
    overheads: dict[int, float] = {}
    try:
        function = start_function("verify_faces", "function/main.py", env)
        assert fake.url and function.url
        stats_url = fake.url.replace(VERIFY_PATH, STATS_PATH)
        to_function = poster(
            function.url, to_function_body(probe, reference), {"Content-Type": "application/json"}
        )
        to_fake = poster(
            fake.url,
            json.dumps({"encoded_image1": b64(reference), "encoded_image2": b64(probe)}).encode(),
            {"Content-Type": "application/json", "Subscriptionkey": key},
        )
        print(
            f"probe {len(probe)} B JPEG, reference {len(reference)} B JPEG, "
            f"fake MXFace delay {args.delay_ms:g} ms, {args.requests} requests per level"
        )
        run(to_function, 30, 2)  # warm-up: engine, pools, connections
        run(to_fake, 30, 2)
        print(HEADER)
        for clients in args.concurrency:
            calls, lines = len(fake_service_ms(stats_url, 0)), len(function.stdout().splitlines())
            latencies, wall = run(to_function, args.requests, clients)
            service = statistics.median(fake_service_ms(stats_url, calls))
            handler = statistics.median(handler_ms(function.stdout().splitlines()[lines:]))
            direct, _ = run(to_fake, args.requests, clients)
            p50 = statistics.median(latencies)
            overhead = p50 - statistics.median(direct)
            overheads[clients] = overhead
            print(
                f"{clients:>7} {p50:>7.2f} {percentile(latencies, 95):>7.2f} "
                f"{len(latencies) / wall:>6.1f} {service:>8.2f} {statistics.median(direct):>10.2f} "
                f"{overhead:>15.2f} {p50 - service:>14.2f} {handler:>11.2f}"
            )
    finally:
        if function is not None:
            function.stop()
        fake.stop()
    floor = noop_floor_ms(to_function_body(probe, reference), args.requests)
    print(f"no-op functions-framework function, same body, 1 client: p50 {floor:.2f} ms")
    for clients, overhead in overheads.items():
        verdict = "meets" if overhead <= TARGET_P50_MS else "misses"
        print(
            f"{clients} client(s): overhead p50 {overhead:.2f} ms {verdict} the "
            f"{TARGET_P50_MS:g} ms target"
        )
    print(LEGEND)


def handler_ms(log_lines: list[str]) -> list[float]:
    """elapsed_ms - engine_ms of each answered verify: the function's own time per request."""
    records = [json.loads(line) for line in log_lines if line.startswith("{")]
    return [r["elapsed_ms"] - r["engine_ms"] for r in records if r.get("message") == "verify done"]


def to_function_body(probe: bytes, reference: bytes) -> bytes:
    return json.dumps(
        {"probe": b64(probe), "references": [{"id": "r1", "image": b64(reference)}]}
    ).encode()


def noop_floor_ms(body: bytes, total: int) -> float:
    """Latency of functions-framework alone: a function that reads the body and answers {}."""
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "main.py"
        source.write_text(NOOP_SOURCE)
        server = start_function("noop", source)
        try:
            assert server.url
            send = poster(server.url, body, {"Content-Type": "application/json"})
            run(send, 30, 1)
            latencies, _ = run(send, total, 1)
        finally:
            server.stop()
    return statistics.median(latencies)


if __name__ == "__main__":
    main()
