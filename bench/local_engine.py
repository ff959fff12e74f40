"""Speed and memory of the local engine (YuNet + SFace) on this machine.

The probe is a 1920x1080 JPEG (a device snapshot) holding one face about 250 px wide, built from
matplotlib's grace_hopper.jpg; the references are face crops (at most 512 px, as the connector
stores them) of that photo and of skimage's astronaut. The references are described once, then
every timed verify finds them in the descriptor cache, as a device's repeated logins do.

Three measurements:

- in this process: the engine's own verify time (p50/p95, the speed targets), also with two
  callers at once. This process's memory includes matplotlib and scikit-image (they build the
  pictures), which the deployed function never loads: it is printed, not compared.
- the real function: `functions-framework` with FACE_ENGINE=local (THREADS as deployed), sent
  the same probe and references over HTTP, sequentially and from two callers at once. The engine
  is built before gunicorn forks (function/main.py), so the worker shares the model pages with
  the server: the memory compared with the target is the tree's with shared pages counted once
  (the server's own peak before the fork, or the largest summed Pss sampled while the requests
  run), as the instance's memory limit counts it. Each process's VmHWM summed, which counts the
  shared pages twice, is printed for information; so is the HTTP p50.
- a fresh interpreter that imports only what the function imports, with its memory after each
  step (numpy + Pillow, cv2, the models, the first inspect, the first verifies): what the peak is
  made of.

Targets: p50 <= 60 ms with 1 cached reference, <= 70 ms with 10, function peak RSS <= 300 MB.
When bench/results/local_engine_dlib.json exists (the previous dlib engine's run of this bench on
the same machine), its figures are printed beside the new ones.

    .venv/bin/python -m bench.local_engine --out bench/results/local_engine.json
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib
import requests
from faceid_core.images import EncodedImage, parse_image
from faceverify.config import load_settings
from faceverify.engines.base import Deadline, Reference
from faceverify.engines.local import LocalEngine
from PIL import Image
from skimage import data

from bench.children import child_json
from devkit.figures import percentile
from devkit.procs import ServerProcess, start_function

TARGETS = {"p50_1_ref_ms": 60.0, "p50_10_refs_ms": 70.0, "function_peak_rss_mb": 300.0}
PROBE_FACE_PX = 250
GRACE_HOPPER_IDS = {f"ref-{i}" for i in range(0, 10, 2)}  # references() alternates people
DLIB_RESULTS = Path(__file__).parent / "results" / "local_engine_dlib.json"
DLIB_LABEL = "previous engine (dlib), same machine"
#: gunicorn threads of the function process: as infra/deploy.sh deploys the local engine
#: (--concurrency 4, THREADS matching).
DEPLOYED_THREADS = 4
STATUS_FIELDS = ("VmRSS", "VmHWM", "Threads")

#: Run with `python -c` in a fresh interpreter: the function's own imports, one step at a time,
#: printing the memory after each as one JSON line. argv: the folder with probe.jpg, ref-*.jpg.
STAGES_CHILD = r"""
import base64, json, sys, time
from pathlib import Path

def status():
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = round(int(value.split()[0]) / 1024, 1)
    return fields

stages = []
def mark(name, started):
    stages.append({"stage": name, "ms": round((time.perf_counter() - started) * 1000, 1),
                   **status()})

folder = Path(sys.argv[1])
mark("interpreter", time.perf_counter())
t = time.perf_counter(); import numpy, PIL.Image; mark("import numpy + Pillow", t)
t = time.perf_counter(); import cv2; mark("import cv2", t)
t = time.perf_counter()
from faceverify.config import load_settings
from faceverify.engines.base import Deadline, Reference
from faceverify.engines.local import LocalEngine
from faceid_core.images import parse_image
import faceverify.service
mark("import faceverify (service, local engine)", t)

def image(path):
    return parse_image(base64.b64encode(path.read_bytes()).decode(), "image", 16_000_000)

probe = image(folder / "probe.jpg")
refs = [Reference(p.stem, image(p)) for p in sorted(folder.glob("ref-*.jpg"))]
t = time.perf_counter(); engine = LocalEngine(load_settings({"FACE_ENGINE": "local"}))
mark("models loaded", t)
t = time.perf_counter(); engine.inspect(probe, Deadline(60)); mark("first inspect (detector)", t)
threshold = engine.default_threshold()
t = time.perf_counter(); engine.verify(probe, refs[:1], threshold, Deadline(60))
mark("first verify, 1 reference (recognizer)", t)
t = time.perf_counter(); engine.verify(probe, refs, threshold, Deadline(60))
mark("first verify, 10 references", t)
t = time.perf_counter()
for _ in range(20):
    engine.verify(probe, refs, threshold, Deadline(60))
mark("20 more verifies, 10 cached references", t)
print(json.dumps(stages))
"""


def encoded(image: Image.Image, quality: int = 85) -> EncodedImage:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return parse_image(base64.b64encode(buffer.getvalue()).decode("ascii"), "image", 10**8)


def grace_hopper() -> Image.Image:
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return Image.open(path).convert("RGB")


def snapshot(person: Image.Image, face_px: int) -> Image.Image:
    """A 1920x1080 frame with the person's face about face_px wide (grace_hopper's is ~215)."""
    scale = face_px / 215
    person = person.resize((round(person.width * scale), round(person.height * scale)))
    frame = Image.new("RGB", (1920, 1080), (96, 104, 112))
    frame.paste(person, ((1920 - person.width) // 2, max(0, (1080 - person.height) // 2)))
    return frame


def references(count: int) -> list[Reference]:
    """Distinct face crops: the first is the probe's person, the rest mostly other crops."""
    people = [grace_hopper(), Image.fromarray(data.astronaut())]
    boxes = [(120, 80, 420, 420), (130, 40, 330, 260)]  # around each face, with margin
    refs = []
    for i in range(count):
        person, box = people[i % 2], boxes[i % 2]
        shift = i // 2 * 4
        crop = person.crop((box[0] - shift, box[1] - shift, box[2] + shift, box[3] + shift))
        refs.append(Reference(f"ref-{i}", encoded(crop, quality=90 - i)))
    return refs


def summary(times: list[float]) -> dict[str, Any]:
    return {
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(percentile(times, 95), 1),
        "min_ms": round(min(times), 1),
        "runs": len(times),
    }


# -- in this process: the engine's own time -----------------------------------------------------
def timed_verify(engine: LocalEngine, probe: EncodedImage, refs: list[Reference], n: int) -> dict:
    threshold = engine.default_threshold()
    result = engine.verify(probe, refs, threshold, Deadline(60))  # fills the cache
    assert result.matched and result.reference_id in GRACE_HOPPER_IDS, result
    times = []
    for _ in range(n):
        started = time.perf_counter()
        engine.verify(probe, refs, threshold, Deadline(60))
        times.append((time.perf_counter() - started) * 1000)
    return {**summary(times), "score": round(result.score, 4)}


def concurrent_verify(engine: LocalEngine, probe: EncodedImage, refs: list[Reference], n: int):
    """Two callers at once (gunicorn threads): wall time per call and total throughput."""
    times: list[float] = []
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(n):
            started = time.perf_counter()
            engine.verify(probe, refs, engine.default_threshold(), Deadline(60))
            with lock:
                times.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    threads = [threading.Thread(target=caller) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "callers": 2,
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(percentile(times, 95), 1),
        "verifies_per_s": round(len(times) / wall, 2),
    }


def proc_status(pid: int | str = "self") -> dict[str, Any]:
    """VmRSS and VmHWM (MB) and the thread count of one process, from /proc."""
    fields: dict[str, Any] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == "Threads":
            fields[name] = int(value)
        elif name in STATUS_FIELDS:
            fields[name] = round(int(value.split()[0]) / 1024, 1)
    return fields


def memory_mb() -> dict:
    """Resident and peak resident memory of this process (the bench's libraries included)."""
    fields = proc_status()
    return {"rss_mb": fields.get("VmRSS"), "peak_rss_mb": fields.get("VmHWM")}


def in_process(probe: EncodedImage, refs: list[Reference], runs: int) -> dict[str, Any]:
    started = time.perf_counter()
    engine = LocalEngine(load_settings({**os.environ, "FACE_ENGINE": "local"}))
    load_s = time.perf_counter() - started

    started = time.perf_counter()
    engine.reference_descriptor(refs[1].image)
    uncached_ms = (time.perf_counter() - started) * 1000

    no_face = encoded(Image.new("RGB", (1920, 1080), (96, 104, 112)))
    started = time.perf_counter()
    faces = engine.inspect(no_face, Deadline(60))
    no_face_ms = (time.perf_counter() - started) * 1000
    assert not faces

    one = timed_verify(engine, probe, refs[:1], runs)
    ten = timed_verify(engine, probe, refs, runs)
    two_callers = concurrent_verify(engine, probe, refs, runs // 2)
    return {
        "model_load_s": round(load_s, 2),
        "reference_uncached_ms": round(uncached_ms, 1),
        "inspect_no_face_1080p_ms": round(no_face_ms, 1),
        "verify_1_cached_ref": one,
        "verify_10_cached_refs": ten,
        "verify_10_refs_2_callers": two_callers,
        # Kept under their old names, comparable with earlier runs (and the dlib file).
        **memory_mb(),
    }


# -- the real function process -------------------------------------------------------------------
def process_tree(pid: int) -> list[int]:
    """`pid` and every descendant (gunicorn's arbiter forks its workers)."""
    found = [pid]
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return []
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for child in children:
            found += process_tree(int(child))
    return found


def rollup_mb(pid: int) -> dict[str, float]:
    """Pss (shared pages split between the processes that map them) and Private (pages no
    other process maps, the USS) from /proc/<pid>/smaps_rollup; empty if it is gone."""
    fields = {"Pss": 0.0, "Private": 0.0}
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except (FileNotFoundError, PermissionError):
        return {}
    for line in lines:
        name, _, value = line.partition(":")
        if name == "Pss":
            fields["Pss"] += int(value.split()[0]) / 1024
        elif name in ("Private_Clean", "Private_Dirty"):
            fields["Private"] += int(value.split()[0]) / 1024
    return {name: round(mb, 1) for name, mb in fields.items()}


def pss_mb(pid: int) -> float | None:
    return rollup_mb(pid).get("Pss")


def tree_memory(pid: int) -> dict[str, Any]:
    """Each process of the function's tree and the sums: VmHWM summed is an upper bound of the
    tree's peak (the peaks may not coincide, and forked pages shared with the arbiter count
    twice); Pss summed is the tree's present memory with shared pages counted once."""
    processes = []
    for each in process_tree(pid):
        try:
            status = proc_status(each)
            cmdline = Path(f"/proc/{each}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        role = "server" if each == pid else "worker"
        processes.append(
            {"pid": each, "role": role, **status, **rollup_mb(each), "argv0": cmdline[0].decode()}
        )
    return {
        "processes": processes,
        "peak_rss_mb": round(sum(p["VmHWM"] for p in processes), 1),
        "rss_mb": round(sum(p["VmRSS"] for p in processes), 1),
        "pss_mb": round(sum(p.get("Pss", 0.0) for p in processes), 1),
    }


class TreeSampler:
    """The largest summed Pss and VmRSS of the function's tree, read every `interval_s` while the
    requests run: the tree's memory with shared pages counted once, which summed VmHWM is not."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.peak_pss_mb = 0.0
        self.peak_rss_mb = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = process_tree(self.pid)
            pss = sum(pss_mb(each) or 0.0 for each in pids)
            rss = 0.0
            for each in pids:
                with contextlib.suppress(FileNotFoundError):  # a process that just ended
                    rss += proc_status(each).get("VmRSS", 0.0)
            self.peak_pss_mb = max(self.peak_pss_mb, round(pss, 1))
            self.peak_rss_mb = max(self.peak_rss_mb, round(rss, 1))
            self.samples += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def verify_body(probe: EncodedImage, refs: list[Reference]) -> bytes:
    return json.dumps(
        {"probe": probe.b64, "references": [{"id": r.id, "image": r.image.b64} for r in refs]}
    ).encode()


def post(session: requests.Session, url: str, body: bytes) -> float:
    started = time.perf_counter()
    response = session.post(
        url, data=body, headers={"Content-Type": "application/json"}, timeout=60
    )
    elapsed = (time.perf_counter() - started) * 1000
    answer = response.json()
    if response.status_code != 200 or answer.get("matched_id") not in GRACE_HOPPER_IDS:
        raise RuntimeError(f"the function answered {response.status_code}: {response.text[:300]}")
    return elapsed


def logged(server: ServerProcess, skip: int) -> list[dict[str, Any]]:
    """The function's 'verify done' log records after its first `skip` output lines."""
    lines = server.stdout().splitlines()[skip:]
    records = [json.loads(line) for line in lines if line.startswith("{")]
    return [r for r in records if r.get("message") == "verify done"]


def http_phase(server: ServerProcess, body: bytes, calls: int, callers: int) -> dict[str, Any]:
    """`calls` verifies from each of `callers` threads; the caller's time and the function's
    own (elapsed_ms and engine_ms from its log line for each request)."""
    assert server.url
    url = server.url
    skip = len(server.stdout().splitlines())

    def caller(_: int) -> list[float]:
        with requests.Session() as session:
            session.trust_env = False
            return [post(session, url, body) for _ in range(calls)]

    started = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        times = [t for each in pool.map(caller, range(callers)) for t in each]
    wall = time.perf_counter() - started
    time.sleep(0.2)  # the log line follows the answer
    records = logged(server, skip)
    return {
        "callers": callers,
        "http": summary(times),
        "verifies_per_s": round(len(times) / wall, 2),
        "function_elapsed_p50_ms": round(statistics.median(r["elapsed_ms"] for r in records), 1),
        "function_engine_p50_ms": round(statistics.median(r["engine_ms"] for r in records), 1),
    }


def function_process(
    probe: EncodedImage, refs: list[Reference], calls: int, threads: int
) -> dict[str, Any]:
    env = {
        "FACE_ENGINE": "local",
        "THREADS": str(threads),
        "WORKERS": None,  # functions-framework's default: one worker
        "MXFACE_KEY": None,
        "MXFACE_KEY_SECRET": None,
    }
    one, ten = verify_body(probe, refs[:1]), verify_body(probe, refs)
    server = start_function("verify_faces", "function/main.py", env, timeout_s=60)
    try:
        assert server.pid is not None and server.url
        memory: dict[str, Any] = {"started": tree_memory(server.pid)}
        with TreeSampler(server.pid) as sampler, requests.Session() as session:
            session.trust_env = False
            first_ms = post(session, server.url, one)  # the first inference (cold)
            memory["after_first_verify"] = tree_memory(server.pid)
            first_ten_ms = post(session, server.url, ten)  # describes the other 9 references
            phases = {
                "1_ref": http_phase(server, one, calls, 1),
                "10_refs": http_phase(server, ten, calls, 1),
                "10_refs_2_callers": http_phase(server, ten, max(1, calls // 2), 2),
            }
        memory["end"] = tree_memory(server.pid)
    finally:
        server.stop()
    end = memory["end"]
    server_peak = next(p["VmHWM"] for p in end["processes"] if p["role"] == "server")
    workers = [p for p in end["processes"] if p["role"] == "worker"]
    return {
        "argv": server.argv[1:],
        "threads": threads,
        "workers": len(workers),
        "first_verify_ms": round(first_ms, 1),
        "first_verify_10_refs_ms": round(first_ten_ms, 1),
        "requests": 2 + sum(p["callers"] * p["http"]["runs"] for p in phases.values()),
        **phases,
        "memory": memory,
        # Every process's own peak, summed: the shared pages counted twice (for information).
        "peak_rss_mb": end["peak_rss_mb"],
        "server_peak_rss_mb": server_peak,
        "worker_peak_rss_mb": round(sum(p["VmHWM"] for p in workers), 1),
        "sampled": {
            "samples": sampler.samples,
            "interval_ms": round(sampler.interval_s * 1000),
            "peak_pss_mb": sampler.peak_pss_mb,
            "peak_rss_sum_mb": sampler.peak_rss_mb,
        },
        # The figure compared with the target, shared pages once: the server alone before it
        # forked (its own peak, at start-up), or the largest summed Pss seen while the requests
        # ran. A transient between two samples can escape it.
        "peak_counted_once_mb": max(server_peak, sampler.peak_pss_mb),
    }


# -- a fresh interpreter, step by step -------------------------------------------------------------
def memory_stages(probe: EncodedImage, refs: list[Reference]) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "probe.jpg").write_bytes(probe.data)
        for ref in refs:
            (Path(folder) / f"{ref.id}.jpg").write_bytes(ref.image.data)
        stages: list[dict[str, Any]] = child_json(
            ["-c", STAGES_CHILD, folder], "the memory-stages interpreter", timeout_s=300
        )
    return stages


# -- report ----------------------------------------------------------------------------------------
def previous_engine() -> dict[str, Any] | None:
    try:
        previous: dict[str, Any] = json.loads(DLIB_RESULTS.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return previous


def dig(result: dict[str, Any], path: str) -> Any:
    value: Any = result
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


#: (label, key path) of the in-process figures, which the dlib run has too.
SIDE_BY_SIDE = (
    ("model load (s)", "in_process.model_load_s"),
    ("one uncached reference (ms)", "in_process.reference_uncached_ms"),
    ("1080p frame with no face (ms)", "in_process.inspect_no_face_1080p_ms"),
    ("verify, 1 cached reference: p50 (ms)", "in_process.verify_1_cached_ref.p50_ms"),
    ("verify, 1 cached reference: p95 (ms)", "in_process.verify_1_cached_ref.p95_ms"),
    ("verify, 10 cached references: p50 (ms)", "in_process.verify_10_cached_refs.p50_ms"),
    ("verify, 10 cached references: p95 (ms)", "in_process.verify_10_cached_refs.p95_ms"),
    ("2 callers, 10 references: p50 (ms)", "in_process.verify_10_refs_2_callers.p50_ms"),
    ("2 callers: verifies/s", "in_process.verify_10_refs_2_callers.verifies_per_s"),
    ("genuine score, 1 reference", "in_process.verify_1_cached_ref.score"),
    ("bench process peak RSS, bench libraries included (MB)", "in_process.peak_rss_mb"),
)


def old_key(path: str) -> str:
    """The same figure in the old (flat) layout of this bench's JSON."""
    return path.removeprefix("in_process.")


def report(result: dict[str, Any], previous: dict[str, Any] | None) -> None:
    inp, fn = result["in_process"], result["function"]
    machine = result["machine"]
    print(
        f"load average before {machine['loadavg_before']}, after {machine['loadavg_after']}"
        f" ({machine['cpus']} CPUs; other work on the machine slows every figure)"
    )
    print("-- in this process (the engine's own time)")
    print(
        f"model load {inp['model_load_s']} s; one uncached reference"
        f" {inp['reference_uncached_ms']:.0f} ms; 1080p frame with no face"
        f" {inp['inspect_no_face_1080p_ms']:.0f} ms"
    )
    for label, r in (
        ("1 cached reference", inp["verify_1_cached_ref"]),
        ("10 cached references", inp["verify_10_cached_refs"]),
    ):
        print(
            f"verify 1920x1080 probe vs {label}: p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms"
            f" ({r['runs']} runs, score {r['score']})"
        )
    two = inp["verify_10_refs_2_callers"]
    print(
        f"2 callers at once, 10 references: p50 {two['p50_ms']} ms, p95 {two['p95_ms']} ms,"
        f" {two['verifies_per_s']} verifies/s"
    )
    print(
        f"bench process RSS {inp['rss_mb']} MB, peak {inp['peak_rss_mb']} MB (includes the"
        " bench's own matplotlib and scikit-image; not the function's figure)"
    )
    print(
        f"-- the function process (functions-framework, FACE_ENGINE=local, THREADS="
        f"{fn['threads']}, {fn['workers']} worker; {fn['requests']} requests over HTTP)"
    )
    print(
        f"first verify (cold) {fn['first_verify_ms']:.0f} ms; first with 10"
        f" references (9 new) {fn['first_verify_10_refs_ms']:.0f} ms"
    )
    for label, key in (
        ("1 reference", "1_ref"),
        ("10 references", "10_refs"),
        ("10 references, 2 callers", "10_refs_2_callers"),
    ):
        p = fn[key]
        print(
            f"HTTP {label}: p50 {p['http']['p50_ms']} ms, p95 {p['http']['p95_ms']} ms"
            f" ({p['http']['runs'] * p['callers']} requests, {p['verifies_per_s']}/s); in the"
            f" function: elapsed p50 {p['function_elapsed_p50_ms']} ms, engine p50"
            f" {p['function_engine_p50_ms']} ms"
        )
    for moment, tree in fn["memory"].items():
        parts = ", ".join(
            f"{p['role']} {p['pid']}: RSS {p['VmRSS']} peak {p['VmHWM']} Pss {p.get('Pss')}"
            f" private {p.get('Private')}"
            f" ({p['Threads']} threads)"
            for p in tree["processes"]
        )
        print(
            f"function memory {moment}: peak {tree['peak_rss_mb']} MB, RSS {tree['rss_mb']} MB,"
            f" Pss {tree['pss_mb']} MB (summed over: {parts})"
        )
    sampled = fn["sampled"]
    print(
        f"function peak RSS: server {fn['server_peak_rss_mb']} MB + worker(s)"
        f" {fn['worker_peak_rss_mb']} MB = {fn['peak_rss_mb']} MB (each process's VmHWM, summed:"
        " pages the worker shares with the server since the fork count twice)"
    )
    print(
        f"function peak with shared pages counted once: {fn['peak_counted_once_mb']} MB"
        f" (largest summed Pss over {sampled['samples']} samples every"
        f" {sampled['interval_ms']} ms: {sampled['peak_pss_mb']} MB; server alone before the"
        f" fork: {fn['server_peak_rss_mb']} MB; largest summed VmRSS sampled:"
        f" {sampled['peak_rss_sum_mb']} MB)"
    )
    print("-- a fresh interpreter with the function's imports only, step by step (MB)")
    for s in result["memory_stages"]:
        print(f"  {s['stage']:<42} RSS {s['VmRSS']:>6}  peak {s['VmHWM']:>6}  ({s['ms']} ms)")
    if previous is not None:
        print(f"-- beside the {DLIB_LABEL} ({DLIB_RESULTS.name}); same bench, in-process figures")
        print(f"  {'':<56} {'YuNet+SFace':>12} {'dlib':>10}")
        for label, path in SIDE_BY_SIDE:
            print(f"  {label:<56} {dig(result, path)!s:>12} {dig(previous, old_key(path))!s:>10}")
    for name, t in result["targets"].items():
        print(
            f"target {name} <= {t['target']:g}: {t['measured']} {'met' if t['met'] else 'MISSED'}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="in-process verifies per case")
    parser.add_argument("--http-calls", type=int, default=20, help="HTTP verifies per case")
    parser.add_argument("--threads", type=int, default=DEPLOYED_THREADS, help="gunicorn threads")
    parser.add_argument("--out", type=Path, default=Path("bench/results/local_engine.json"))
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    probe = encoded(snapshot(grace_hopper(), PROBE_FACE_PX))
    refs = references(10)
    stages = memory_stages(probe, refs)
    function = function_process(probe, refs, args.http_calls, args.threads)
    inside = in_process(probe, refs, args.runs)
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "probe": {
            "size": [probe.width, probe.height],
            "face_px": PROBE_FACE_PX,
            "jpeg_bytes": len(probe.data),
        },
        "in_process": inside,
        "function": function,
        "memory_stages": stages,
    }
    checks = {
        "p50_1_ref_ms": inside["verify_1_cached_ref"]["p50_ms"],
        "p50_10_refs_ms": inside["verify_10_cached_refs"]["p50_ms"],
        "function_peak_rss_mb": function["peak_counted_once_mb"],
    }
    result["targets"] = {
        k: {"target": TARGETS[k], "measured": v, "met": v is not None and v <= TARGETS[k]}
        for k, v in checks.items()
    }
    previous = previous_engine()
    if previous is not None:
        result["previous_engine"] = {"label": DLIB_LABEL, "file": str(DLIB_RESULTS.name)}
    report(result, previous)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
