"""Figures that the benchmarks and the load test report, computed one way for all of them."""

from __future__ import annotations


def percentile(values: list[float], q: float) -> float:
    """The measured value nearest the `q`-th percentile (0-100), without interpolation: a p95 is
    a latency that was actually seen."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]
