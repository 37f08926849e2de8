"""Summaries: latency percentiles over a fixed number of timed requests; a figure's spread over rounds."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LatencySummary:
    """Milliseconds: count, p50, p95, p99, mean, min, max."""

    count: int
    p50: float
    p95: float
    p99: float
    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, samples_ms: list[float]) -> LatencySummary:
        """Summarise samples (linear-interpolated percentiles); an empty list is an error."""
        if not samples_ms:
            raise ValueError("no latency samples to summarise")
        values = np.asarray(samples_ms, dtype=np.float64)
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        return cls(len(values), float(p50), float(p95), float(p99), float(values.mean()), float(values.min()), float(values.max()))

    def to_dict(self) -> dict:
        return asdict(self)


def spread(values: list[float]) -> dict[str, float]:
    """A figure measured once per round: its median, min and max (how the benchmarks report a goal)."""
    if not values:
        raise ValueError("no rounds to summarise")
    return {"median": float(statistics.median(values)), "min": min(values), "max": max(values)}
