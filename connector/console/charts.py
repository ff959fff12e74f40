"""The overview's charts, drawn on the server from the store's audit log (no script, no external
service): verifies per hour by outcome over the last 24 hours, and the p50 and p95 of a verify's
total time per hour. This module computes the geometry; templates/charts.html draws it as inline
SVG, each chart with a table of its numbers beside it (for a screen reader, and to read exactly).

The accuracy figure is docs/accuracy.png, drawn by bench/accuracy.py from a face set that may
not be redistributed; static/accuracy.png is a byte-for-byte copy, which a test keeps equal."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ..store import AuditEntry

HOUR_S = 3600
HOURS = 24
#: A verify's verdicts (verification.py), bottom to top in a bar.
OUTCOMES = ("match", "no_match", "error")
#: The drawing's size in SVG units (it scales to the page's width) and its margins.
WIDTH, HEIGHT = 720.0, 220.0
LEFT, RIGHT, TOP, BOTTOM = 48.0, 12.0, 12.0, 28.0
LABEL_EVERY_H = 3


@dataclass(frozen=True)
class Accuracy:
    """The DET plot as the overview shows it: where it comes from, in words."""

    filename: str
    alt: str
    caption: str
    width: int  # its pixels: the page never draws it wider, and links to it at this size
    height: int


ACCURACY = Accuracy(
    filename="accuracy.png",
    alt=(
        "Three plots of the local engine's accuracy: the DET curve (false rejects against false "
        "accepts), both error rates against the threshold, and the scores of genuine and "
        "impostor pairs with the default threshold 0.48 between them."
    ),
    caption=(
        "Measured by bench/accuracy.py on the development face set (13 people, 51 press photos; "
        "docs/accuracy.md): a small set, so 0 errors there is no promise of 0 errors in your "
        "rooms. This figure is not drawn from this connector's own logins."
    ),
    width=1440,
    height=450,
)


@dataclass(frozen=True)
class Tick:
    at: float  # x or y in SVG units
    label: str


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    outcome: str
    count: int
    hour: str


@dataclass(frozen=True)
class Hour:
    """One hour's numbers, for the table beside a chart."""

    label: str
    counts: dict[str, int]
    p50_ms: float | None
    p95_ms: float | None
    verifies: int


@dataclass(frozen=True)
class Chart:
    """One chart: its marks, its axes, and its numbers."""

    title: str
    bars: list[Bar]
    lines: dict[str, str]  # series -> SVG path data ("M x y L x y ...")
    points: list[tuple[str, float, float]]  # series, x, y: a dot per value (lone hours show)
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    hours: list[Hour]
    totals: dict[str, float | int | None]
    width: float = WIDTH
    height: float = HEIGHT
    left: float = LEFT
    bottom: float = HEIGHT - BOTTOM


def _hours(now: float) -> float:
    """The start of the first of the 24 hours that end with the current one."""
    return (math.floor(now / HOUR_S) - (HOURS - 1)) * HOUR_S


def _bucket(entry: AuditEntry, start: float) -> int | None:
    if entry.time is None:
        return None
    index = math.floor((entry.time - start) / HOUR_S)
    return index if 0 <= index < HOURS else None


def _label(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:00")


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank percentile (p in 0..100): a value that was measured, never between two."""
    if not values:
        return None
    ranked = sorted(values)
    return ranked[max(0, math.ceil(p / 100 * len(ranked)) - 1)]


def _scale(top: float) -> tuple[float, list[Tick]]:
    """The y axis: four steps of a round size (1, 2 or 5 times a power of ten, at least 1) that
    reach `top`, and their ticks."""
    top = max(top, 1.0)
    magnitude = 10.0 ** math.floor(math.log10(top / 4)) if top > 4 else 1.0
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude * 4 >= top)
    plot = HEIGHT - BOTTOM - TOP
    ticks = [Tick(HEIGHT - BOTTOM - plot * i / 4, f"{step * i:g}") for i in range(5)]
    return step * 4, ticks


def _x(index: float) -> float:
    return LEFT + (WIDTH - LEFT - RIGHT) * index / HOURS


def _x_ticks(start: float) -> list[Tick]:
    return [Tick(_x(i + 0.5), _label(start + i * HOUR_S)) for i in range(0, HOURS, LABEL_EVERY_H)]


def _per_hour(entries: Sequence[AuditEntry], now: float) -> tuple[float, list[list[AuditEntry]]]:
    start = _hours(now)
    hours: list[list[AuditEntry]] = [[] for _ in range(HOURS)]
    for entry in entries:
        index = _bucket(entry, start)
        if index is not None:
            hours[index].append(entry)
    return start, hours


def _total_ms(entry: AuditEntry) -> float | None:
    total = (entry.stages_ms or {}).get("total")
    return float(total) if isinstance(total, int | float) else None


def _hour_rows(start: float, hours: list[list[AuditEntry]]) -> list[Hour]:
    rows = []
    for i, entries in enumerate(hours):
        counts = {o: sum(1 for e in entries if e.outcome == o) for o in OUTCOMES}
        times = [t for t in map(_total_ms, entries) if t is not None]
        rows.append(
            Hour(
                _label(start + i * HOUR_S),
                counts,
                percentile(times, 50),
                percentile(times, 95),
                len(entries),
            )
        )
    return rows


def verifies_per_hour(entries: Sequence[AuditEntry], now: float) -> Chart:
    """Stacked bars: each hour's verifies by outcome (`entries`: the verify audit entries)."""
    start, hours = _per_hour(entries, now)
    rows = _hour_rows(start, hours)
    ceiling, y_ticks = _scale(max((sum(r.counts.values()) for r in rows), default=0))
    plot = HEIGHT - BOTTOM - TOP
    slot = (WIDTH - LEFT - RIGHT) / HOURS
    bars = []
    for i, row in enumerate(rows):
        base = HEIGHT - BOTTOM
        for outcome in OUTCOMES:
            count = row.counts[outcome]
            if count:
                height = plot * count / ceiling
                base -= height
                bars.append(
                    Bar(_x(i) + slot * 0.15, base, slot * 0.7, height, outcome, count, row.label)
                )
    totals: dict[str, float | int | None] = {o: sum(r.counts[o] for r in rows) for o in OUTCOMES}
    return Chart(
        "Verifies per hour, by outcome", bars, {}, [], _x_ticks(start), y_ticks, rows, totals
    )


def latency_per_hour(entries: Sequence[AuditEntry], now: float) -> Chart:
    """Two lines: each hour's p50 and p95 of a verify's total time, in milliseconds."""
    start, hours = _per_hour(entries, now)
    rows = _hour_rows(start, hours)
    series = {"p50": [r.p50_ms for r in rows], "p95": [r.p95_ms for r in rows]}
    ceiling, y_ticks = _scale(max((v for v in series["p95"] if v is not None), default=0))
    plot = HEIGHT - BOTTOM - TOP
    lines: dict[str, str] = {}
    points: list[tuple[str, float, float]] = []
    for name, values in series.items():
        path, joined = [], False
        for i, value in enumerate(values):
            if value is None:
                joined = False
                continue
            x, y = _x(i + 0.5), HEIGHT - BOTTOM - plot * min(value, ceiling) / ceiling
            path.append(f"{'L' if joined else 'M'}{x:.1f} {y:.1f}")
            points.append((name, x, y))
            joined = True
        lines[name] = " ".join(path)
    everything = [t for t in map(_total_ms, (e for hour in hours for e in hour)) if t is not None]
    totals: dict[str, float | int | None] = {
        "p50": percentile(everything, 50),
        "p95": percentile(everything, 95),
        "verifies": len(everything),
    }
    return Chart(
        "Verify time per hour, p50 and p95 (ms)",
        [],
        lines,
        points,
        _x_ticks(start),
        y_ticks,
        rows,
        totals,
    )
