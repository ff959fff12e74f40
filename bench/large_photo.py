"""Enrolling a very large photo: peak memory and time, each photo in a fresh process.

An administrator enrolls a phone photo (`connector.admin enroll`): the connector shrinks it
(`downscale_jpeg`, 960 px), the function finds its face (`inspect`), the connector cuts the face
out (`crop_face`) and the function verifies the crop against itself (connector/enrollment.py).
Here the four steps run in that order in one fresh interpreter per photo, the function's through
`parse_image` and the local engine as its handler calls them, so that the interpreter's VmHWM is
that enrollment's own peak. A baseline interpreter imports the same modules and reads the same
bytes, and nothing else; its peak is subtracted. The models load between the first two steps (the
function's fixed cost, paid once per process); `downscale_jpeg`, the only step that sees the
large picture, runs before them, so its own peak shows on its own.

Photos, JPEG quality 90, built in memory from matplotlib's grace_hopper.jpg upscaled onto a
textured canvas: 48 MP (8000x6000), 36 MP (7360x4912), 48 MP stored turned with EXIF orientation
6 (as phones store portrait photos), and a 1920x1080 frame for comparison.

Refusals, each in a fresh interpreter too: PNG bombs (one colour, compressed small, their headers
announcing more than MAX_IMAGE_PIXELS) through the function's input check (`parse_image`), the
engine's decoder (`decode_rgb`) and the connector (`downscale_jpeg`); then the same bombs sent to
the real function process (FACE_ENGINE=local) over HTTP, with its memory before and after.

    .venv/bin/python -m bench.large_photo --out bench/results/large_photo.json
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from faceid_core.errors import FaceIdError
from faceid_core.images import JPEG_DRAFT_PIXELS, PNG_MAGIC, decode_rgb, parse_image
from faceverify.config import Settings, load_settings
from faceverify.engines.base import Deadline, Reference
from faceverify.engines.local import LocalEngine
from faceverify.service import status_of
from PIL import Image

from bench.children import child_json
from connector.faces import PROBE_MAX_SIDE, crop_face, downscale_jpeg

REPO = Path(__file__).resolve().parents[1]
MAX_PIXELS = Settings.max_image_pixels
JPEG_QUALITY = 90
#: name -> (width, height as seen, EXIF orientation): the photos enrolled.
PHOTOS: dict[str, tuple[int, int, int]] = {
    "1080p": (1920, 1080, 1),
    "36mp": (7360, 4912, 1),
    "48mp": (8000, 6000, 1),
    "48mp_portrait_exif6": (6000, 8000, 6),
}
#: The person's height as a share of the picture's (grace_hopper.jpg is 512x600, its face ~215 px).
PERSON_SHARE = 0.7
BOMB_COLOUR = (96, 104, 112)
#: name -> (width, height) of one-colour PNGs. 8000x8000 stays under Pillow's own bomb warning
#: (Image.MAX_IMAGE_PIXELS, 89 MP), so MAX_IMAGE_PIXELS alone refuses it.
PNG_BOMBS = {"png_20000x20000": (20000, 20000), "png_8000x8000": (8000, 8000)}
#: A real JPEG with only its header's size changed (refused before any pixel is decoded): a
#: 108 MP phone photo, within the 64x allowance images.py gives JPEGs (they decode at 1/8).
JPEG_HEADERS = {"jpeg_header_12000x9000": (12000, 9000)}
ORIENTATION_TAG = 0x0112


# -- in the fresh interpreter ----------------------------------------------------------------------
def status_mb() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = round(int(value.split()[0]) / 1024, 1)
    return fields


class Stages:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._started = time.perf_counter()

    def mark(self, stage: str) -> None:
        now = time.perf_counter()
        ms = round((now - self._started) * 1000, 1)
        self.rows.append({"stage": stage, "ms": ms, **status_mb()})
        self._started = time.perf_counter()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def baseline_child(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    stages = Stages()
    stages.mark("imports + photo bytes read")
    return {"bytes": len(data), "stages": stages.rows}


def enroll_child(path: Path) -> dict[str, Any]:
    """connector/enrollment.py's usable_crop, with the function's part done in-process."""
    data = path.read_bytes()
    stages = Stages()
    stages.mark("imports + photo bytes read")
    small = downscale_jpeg(data)
    stages.mark("connector: downscale_jpeg")
    settings = load_settings({**os.environ, "FACE_ENGINE": "local"})
    engine = LocalEngine(settings)
    stages.mark("function: models loaded")
    image = parse_image(b64(small), "image", settings.max_image_pixels)
    faces = engine.inspect(image, Deadline(60))
    stages.mark("function: parse_image + inspect")
    if len(faces) != 1:
        raise RuntimeError(f"expected one face, found {faces}")
    crop = crop_face(small, faces[0].box)
    stages.mark("connector: crop_face")
    probe = parse_image(b64(crop), "probe", settings.max_image_pixels)
    reference = parse_image(b64(crop), "references[0].image", settings.max_image_pixels)
    result = engine.verify(
        probe, [Reference("self", reference)], engine.default_threshold(), Deadline(60)
    )
    stages.mark("function: parse_image + verify crop vs itself")
    if not result.matched:
        raise RuntimeError(f"the crop does not match itself: {result}")
    return {
        "bytes": len(data),
        "probe": {"size": [image.width, image.height], "jpeg_bytes": len(small)},
        "face_box": list(faces[0].box),
        "crop": {"size": [probe.width, probe.height], "jpeg_bytes": len(crop)},
        "self_score": round(result.score, 4),
        "stages": stages.rows,
    }


def full_decode_child(path: Path) -> dict[str, Any]:
    """For comparison only: Pillow decoding the whole picture, as without draft mode."""
    data = path.read_bytes()
    stages = Stages()
    stages.mark("imports + photo bytes read")
    with Image.open(io.BytesIO(data)) as opened:
        size = opened.convert("RGB").size
    stages.mark("Image.open(...).convert('RGB'), full size")
    return {"bytes": len(data), "size": list(size), "stages": stages.rows}


def refusal(call: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        call()
    except FaceIdError as exc:
        outcome = {"status": status_of(exc), "code": exc.code, "message": exc.message}
    else:
        outcome = {"status": 200, "code": None, "message": "accepted"}
    return {"ms": round((time.perf_counter() - started) * 1000, 2), **outcome}


def bomb_child(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    text = b64(data)
    stages = Stages()
    stages.mark("imports + bytes read")
    checks = {
        "function parse_image": refusal(lambda: parse_image(text, "image", MAX_PIXELS)),
        "engine decode_rgb": refusal(lambda: decode_rgb(data, 640, MAX_PIXELS, "image")),
        "connector downscale_jpeg": refusal(lambda: downscale_jpeg(data)),
    }
    stages.mark("all three refused")
    return {"bytes": len(data), "checks": checks, "stages": stages.rows}


CHILDREN = {
    "baseline": baseline_child,
    "enroll": enroll_child,
    "full_decode": full_decode_child,
    "bomb": bomb_child,
}


# -- building the pictures (in this process) -------------------------------------------------------
def grace_hopper() -> Image.Image:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return Image.open(path).convert("RGB")


def photo(width: int, height: int, orientation: int) -> tuple[bytes, int]:
    """A JPEG that shows width x height (stored turned for EXIF orientation 6): a muted
    background with camera-like noise, the person standing at the bottom. Also the face's
    width as seen, about."""
    person = grace_hopper()
    scale = PERSON_SHARE * height / person.height
    person = person.resize(
        (round(person.width * scale), round(person.height * scale)), Image.Resampling.BICUBIC
    )
    rng = np.random.default_rng(width * height)
    cells = (height // 400 + 2, width // 400 + 2)
    base = rng.integers(70, 190, (*cells, 1), dtype=np.int16)
    tint = rng.integers(-12, 13, (*cells, 3), dtype=np.int16)
    low = np.clip(base + tint, 0, 255).astype(np.uint8)
    canvas = Image.fromarray(low).resize((width, height), Image.Resampling.BICUBIC)
    canvas.paste(person, ((width - person.width) // 2, height - person.height))
    noise = rng.integers(-6, 7, (512, 512, 1), dtype=np.int16)
    noise = np.tile(noise, (-(-height // 512), -(-width // 512), 1))[:height, :width]
    pixels = np.clip(np.asarray(canvas, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    if orientation == 6:  # seen = stored turned a quarter clockwise
        image = image.transpose(Image.Transpose.ROTATE_90)
        exif[ORIENTATION_TAG] = 6
    out = io.BytesIO()
    image.save(out, "JPEG", quality=JPEG_QUALITY, exif=exif.tobytes())
    return out.getvalue(), round(215 * scale)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG of one colour: a 1-bit palette image, every row filter 0 and index 0."""
    header = struct.pack(">IIBBBBB", width, height, 1, 3, 0, 0, 0)
    row = bytes(1 + -(-width // 8))
    packer = zlib.compressobj(9)
    idat = []
    for start in range(0, height, 1000):
        idat.append(packer.compress(row * min(1000, height - start)))
    idat.append(packer.flush())
    return (
        PNG_MAGIC
        + png_chunk(b"IHDR", header)
        + png_chunk(b"PLTE", bytes(BOMB_COLOUR))
        + png_chunk(b"IDAT", b"".join(idat))
        + png_chunk(b"IEND", b"")
    )


def check_png_bomb(data: bytes, width: int, height: int) -> None:
    """Prove the bomb is a real picture of that size: its data inflates to every row, streamed."""
    assert data.startswith(PNG_MAGIC)
    start = data.index(b"IDAT") + 4
    length = struct.unpack(">I", data[start - 8 : start - 4])[0]
    inflater = zlib.decompressobj()
    total, body = 0, data[start : start + length]
    for offset in range(0, len(body), 64 * 1024):
        total += len(inflater.decompress(body[offset : offset + 64 * 1024], 1 << 24))
        while inflater.unconsumed_tail:
            total += len(inflater.decompress(inflater.unconsumed_tail, 1 << 24))
    assert total == height * (1 + -(-width // 8)), total
    assert struct.unpack(">II", data[16:24]) == (width, height)  # IHDR's first fields


def jpeg_with_header_size(width: int, height: int) -> bytes:
    """A small real JPEG whose start-of-frame claims width x height."""
    out = io.BytesIO()
    Image.new("RGB", (64, 64), BOMB_COLOUR).save(out, "JPEG", quality=JPEG_QUALITY)
    data = out.getvalue()
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


# -- running the children --------------------------------------------------------------------------
def run_child(mode: str, path: Path) -> dict[str, Any]:
    result: dict[str, Any] = child_json(
        ["-m", "bench.large_photo", "--child", mode, str(path)], f"{mode} {path.name}"
    )
    return result


def stage(result: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in result["stages"] if s["stage"] == name)


def enroll_photo(path: Path, repeat: int) -> dict[str, Any]:
    baseline = run_child("baseline", path)["stages"][0]
    runs = [run_child("enroll", path) for _ in range(repeat)]
    names = [s["stage"] for s in runs[0]["stages"]]
    stages = [
        {
            "stage": name,
            "ms_median": round(statistics.median(stage(r, name)["ms"] for r in runs), 1),
            "VmRSS_max": max(stage(r, name)["VmRSS"] for r in runs),
            "VmHWM_max": max(stage(r, name)["VmHWM"] for r in runs),
        }
        for name in names
    ]
    base_peak = baseline["VmHWM"]
    downscale = next(s for s in stages if s["stage"] == "connector: downscale_jpeg")
    last = stages[-1]
    first = runs[0]
    return {
        "jpeg_bytes": first["bytes"],
        "probe": first["probe"],
        "face_box": first["face_box"],
        "crop": first["crop"],
        "self_score": first["self_score"],
        "runs": repeat,
        "baseline": baseline,
        "stages": stages,
        "downscale_ms": downscale["ms_median"],
        "downscale_peak_over_baseline_mb": round(downscale["VmHWM_max"] - base_peak, 1),
        "enrollment_ms": round(sum(s["ms_median"] for s in stages[1:]), 1),
        "enrollment_peak_mb": last["VmHWM_max"],
        "enrollment_peak_over_baseline_mb": round(last["VmHWM_max"] - base_peak, 1),
    }


def http_bombs(bombs: dict[str, bytes], warm_up: bytes) -> dict[str, Any]:
    """The bombs sent to the real function, as /inspect's image and as a verify's probe."""
    import requests

    from bench.local_engine import tree_memory
    from devkit.procs import start_function

    env = {"FACE_ENGINE": "local", "MXFACE_KEY": None, "MXFACE_KEY_SECRET": None}
    server = start_function("verify_faces", "function/main.py", env, timeout_s=60)
    answers = {}
    try:
        assert server.pid is not None and server.url
        with requests.Session() as session:
            session.trust_env = False
            answer = session.post(server.url + "/inspect", json={"image": b64(warm_up)}, timeout=60)
            assert answer.status_code == 200 and len(answer.json()["faces"]) == 1, answer.text
            before = tree_memory(server.pid)
            for name, data in bombs.items():
                for route, body in (
                    ("/inspect", {"image": b64(data)}),
                    ("/", {"probe": b64(data), "references": [{"id": "r", "image": b64(warm_up)}]}),
                ):
                    started = time.perf_counter()
                    response = session.post(server.url + route, json=body, timeout=60)
                    ms = (time.perf_counter() - started) * 1000
                    error = response.json().get("error", {})
                    answers[f"{name} POST {route}"] = {
                        "status": response.status_code,
                        "code": error.get("code"),
                        "message": error.get("message"),
                        "ms": round(ms, 1),
                    }
            after = tree_memory(server.pid)
    finally:
        server.stop()

    def worker(tree: dict[str, Any]) -> dict[str, Any]:
        found = [p for p in tree["processes"] if p["role"] == "worker"] or tree["processes"]
        return {"VmRSS": found[-1]["VmRSS"], "VmHWM": found[-1]["VmHWM"]}

    return {
        "answers": answers,
        "worker_before": worker(before),
        "worker_after": worker(after),
        "tree_peak_before_mb": before["peak_rss_mb"],
        "tree_peak_after_mb": after["peak_rss_mb"],
    }


# -- report ----------------------------------------------------------------------------------------
def report(result: dict[str, Any]) -> None:
    machine = result["machine"]
    print(
        f"load average before {machine['loadavg_before']}, after {machine['loadavg_after']}"
        f" ({machine['cpus']} CPUs); MAX_IMAGE_PIXELS {MAX_PIXELS}, JPEG headers up to"
        f" {JPEG_DRAFT_PIXELS}x that; probe long side {PROBE_MAX_SIDE} px"
    )
    print("-- enrollment of one photo, fresh interpreter each, peak = VmHWM (MB)")
    for name, p in result["photos"].items():
        base = p["baseline"]
        print(
            f"{name}: {p['size'][0]}x{p['size'][1]} as seen ({p['stored'][0]}x{p['stored'][1]}"
            f" stored, EXIF orientation {p['orientation']}), {p['jpeg_bytes'] / 1e6:.1f} MB JPEG,"
            f" face ~{p['face_px']} px; probe {p['probe']['size'][0]}x{p['probe']['size'][1]},"
            f" face box {p['face_box']}, crop {p['crop']['size'][0]}x{p['crop']['size'][1]},"
            f" self score {p['self_score']}"
        )
        print(f"  baseline (same imports + the bytes): RSS {base['VmRSS']}, peak {base['VmHWM']}")
        for s in p["stages"]:
            print(
                f"  {s['stage']:<46} RSS {s['VmRSS_max']:>6}  peak {s['VmHWM_max']:>6}"
                f"  {s['ms_median']:>7} ms"
            )
        print(
            f"  => downscale_jpeg {p['downscale_ms']} ms, peak"
            f" +{p['downscale_peak_over_baseline_mb']} MB over baseline; whole enrollment"
            f" {p['enrollment_ms']} ms, peak"
            f" {p['enrollment_peak_mb']} MB = +{p['enrollment_peak_over_baseline_mb']} MB over"
            f" baseline (models included; median of {p['runs']} runs, peaks their max)"
        )
    full = result.get("full_decode_48mp")
    if full:
        print(
            f"for comparison, a full-size Pillow decode of the 48 MP JPEG: peak"
            f" +{full['peak_over_baseline_mb']} MB over baseline in {full['ms']} ms"
        )
    print("-- refusals, fresh interpreter each")
    for name, b in result["refusals"].items():
        print(
            f"{name}: {b['bytes']} bytes, header {b['announces'][0]}x{b['announces'][1]}"
            f" ({b['announces'][0] * b['announces'][1] / 1e6:.0f} MP); peak growth"
            f" {b['peak_growth_mb']} MB, RSS growth {b['rss_growth_mb']} MB"
        )
        for where, c in b["checks"].items():
            print(f"  {where:<26} {c['status']} {c['code']} in {c['ms']} ms: {c['message']}")
    http = result.get("http_refusals")
    if http:
        print("-- the real function (FACE_ENGINE=local) over HTTP, after one warm-up /inspect")
        for name, a in http["answers"].items():
            print(f"  {name:<40} {a['status']} {a['code']} in {a['ms']} ms: {a['message']}")
        before, after = http["worker_before"], http["worker_after"]
        print(
            f"  worker RSS {before['VmRSS']} -> {after['VmRSS']} MB, peak {before['VmHWM']} ->"
            f" {after['VmHWM']} MB"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="fresh enrollments per photo")
    parser.add_argument("--out", type=Path, default=Path("bench/results/large_photo.json"))
    parser.add_argument("--no-http", action="store_true", help="skip the real function")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(CHILDREN[args.child[0]](Path(args.child[1]))))
        return 0

    load_before = os.getloadavg()
    result: dict[str, Any] = {"photos": {}, "refusals": {}}
    with tempfile.TemporaryDirectory() as folder:
        files: dict[str, Path] = {}
        for name, (width, height, orientation) in PHOTOS.items():
            data, face_px = photo(width, height, orientation)
            files[name] = Path(folder) / f"{name}.jpg"
            files[name].write_bytes(data)
            stored = [height, width] if orientation == 6 else [width, height]
            result["photos"][name] = {
                "size": [width, height],
                "stored": stored,
                "orientation": orientation,
                "face_px": face_px,
                **enroll_photo(files[name], args.repeat),
            }
        baseline = run_child("baseline", files["48mp"])["stages"][0]
        full = run_child("full_decode", files["48mp"])["stages"][-1]
        result["full_decode_48mp"] = {
            "ms": full["ms"],
            "peak_mb": full["VmHWM"],
            "peak_over_baseline_mb": round(full["VmHWM"] - baseline["VmHWM"], 1),
        }

        bombs: dict[str, bytes] = {}
        for name, (width, height) in PNG_BOMBS.items():
            bombs[name] = png_bomb(width, height)
            check_png_bomb(bombs[name], width, height)
        for name, (width, height) in JPEG_HEADERS.items():
            bombs[name] = jpeg_with_header_size(width, height)
        sizes = {**PNG_BOMBS, **JPEG_HEADERS}
        for name, data in bombs.items():
            path = Path(folder) / name
            path.write_bytes(data)
            refused = run_child("bomb", path)
            first, last = refused["stages"][0], refused["stages"][-1]
            result["refusals"][name] = {
                "announces": list(sizes[name]),
                "bytes": refused["bytes"],
                "checks": refused["checks"],
                "peak_growth_mb": round(last["VmHWM"] - first["VmHWM"], 1),
                "rss_growth_mb": round(last["VmRSS"] - first["VmRSS"], 1),
                "stages": refused["stages"],
            }
        if not args.no_http:
            warm_up = downscale_jpeg(files["1080p"].read_bytes())
            result["http_refusals"] = http_bombs(bombs, warm_up)
    result["machine"] = {
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
