"""Accuracy of the local engine on a folder of faces: FRR and FAR per threshold, JSON and a plot.

The dataset has one sub-folder per person (folders starting with "_" are skipped). Each image is
described once, as a probe (every usable face, as /verify does) and as a reference (its largest
face); the pairs are then cheap. Two modes:

- single: one reference photo per person; every ordered (probe, reference) pair of two different
  photos, genuine when both show the same person.
- multi: enrollment with several photos; each photo is a probe against all OTHER photos of the
  claimed person (genuine) or all photos of another person (impostor); the score is the maximum.

A photo where no usable face is found counts honestly: as a probe it is a failure to acquire,
as a reference a failure to enrol; every genuine attempt that needed it counts as rejected.

    .venv/bin/python -m bench.accuracy --dataset ../shared/faces \
        --out bench/results/accuracy.json --plot docs/accuracy.png
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from faceverify.config import load_settings
from faceverify.engines.local import LocalEngine, similarity
from faceverify.errors import FaceIdError
from faceverify.images import parse_image

SHARED_FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"  # beside the repository
THRESHOLDS = [round(t, 2) for t in np.arange(0.0, 1.0001, 0.01)]
TABLE_STEP = 5  # the table shows every 0.05, and every 0.01 near the default
NEAR_DEFAULT = 0.05
FRR_TARGET = 0.05


@dataclass
class Photo:
    person: str
    name: str
    probe: np.ndarray | None  # rows: usable faces, largest first
    reference: np.ndarray | None
    failure: str | None  # the engine's code when the photo could not serve as probe/reference


@dataclass
class Mode:
    genuine: list[float | None]  # None: a failure to acquire or enrol (counts as a rejection)
    impostor: list[float | None]

    def rates(self, threshold: float) -> tuple[float, float]:
        """(FRR, FAR) at `threshold`; failures reject genuine attempts and accept no impostor."""
        rejected = sum(1 for s in self.genuine if s is None or s < threshold)
        accepted = sum(1 for s in self.impostor if s is not None and s >= threshold)
        return rejected / max(1, len(self.genuine)), accepted / max(1, len(self.impostor))

    def window(self) -> dict:
        """Where FAR is 0 (above the highest impostor) and where FRR meets its target."""
        impostor = [s for s in self.impostor if s is not None]
        genuine = sorted((s for s in self.genuine if s is not None), reverse=True)
        allowed = int(FRR_TARGET * len(self.genuine)) - (len(self.genuine) - len(genuine))
        return {
            "far_0_above": round(max(impostor), 4) if impostor else None,
            "frr_target": FRR_TARGET,
            "frr_target_up_to": round(genuine[-1 - allowed], 4)
            if 0 <= allowed < len(genuine)
            else None,
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
        }


def describe(engine: LocalEngine, path: Path, person: str) -> Photo:
    text = base64.b64encode(path.read_bytes()).decode("ascii")
    image = parse_image(text, path.name, engine.settings.max_image_pixels)
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
    return Photo(person, path.name, probe, reference, failure)


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


def single_mode(photos: list[Photo]) -> Mode:
    mode = Mode([], [])
    for probe in photos:
        for ref in photos:
            if ref is not probe:
                bucket = mode.genuine if ref.person == probe.person else mode.impostor
                bucket.append(score(probe, [ref]))
    return mode


def multi_mode(photos: list[Photo]) -> Mode:
    people = sorted({p.person for p in photos})
    mode = Mode([], [])
    for probe in photos:
        for person in people:
            refs = [r for r in photos if r.person == person and r is not probe]
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


def plot(modes: dict[str, Mode], default: float, path: Path) -> None:
    """DET curve, error rates against the threshold, and the score distributions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        notes.append(f"{name}: FAR {far:.2%}, FRR {frr:.2%}")
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
    errors.set_xlim(0.3, 0.75)
    errors.set_xlabel("threshold (score)")
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
    dist.set_yscale("log")
    dist.set_xlabel("score (1 - descriptor distance)")
    dist.set_ylabel("pairs (log)")
    dist.set_title("Scores, one reference per person")
    dist.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=SHARED_FACES)
    parser.add_argument("--out", type=Path, default=Path("bench/results/accuracy.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/accuracy.png"))
    parser.add_argument("--threshold", type=float, help="default: LOCAL_MATCH_THRESHOLD")
    args = parser.parse_args(argv)
    if not args.dataset.is_dir():
        print(f"dataset folder not found: {args.dataset}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    engine = LocalEngine(load_settings({**os.environ, "FACE_ENGINE": "local"}))
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
            f"{s['impostor_attempts']}); lowest genuine {s['lowest_genuine_score']}, highest"
            f" impostor {s['highest_impostor_score']} (margin {s['margin_to_nearest_impostor']});"
            f" FAR 0 needs > {w['far_0_above']}, FRR <= {FRR_TARGET:.0%} needs <="
            f" {w['frr_target_up_to']}"
        )
    result = {
        "dataset": str(args.dataset),
        "people": len(people),
        "photos": len(photos),
        "failures": failures,
        "default_threshold": default,
        "at_default": summaries,
        "windows": windows,
        "table": rows,
        "scores": {n: {"genuine": m.genuine, "impostor": m.impostor} for n, m in modes.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    plot(modes, default, args.plot)
    print(f"wrote {args.out} and {args.plot} in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
