"""Means with 95 % bootstrap confidence intervals over seeds (scipy.stats.bootstrap, percentile method).

The seed is the unit of replication: each seed has its own concept pair, training images and
training randomness, and its images are scored together; seeds are resampled with replacement.
Comparisons of two rows use a *paired* bootstrap (the same resampled seeds for both rows).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

RESAMPLES = 10_000


def _interval(data: tuple[np.ndarray, ...], statistic, confidence: float, seed: int) -> tuple[float, float]:
    if len(data[0]) < 2 or all(np.ptp(values) == 0 for values in data):
        value = float(statistic(*data))
        return value, value  # nothing to resample: the interval is the value itself
    result = stats.bootstrap(
        data, statistic, paired=len(data) > 1, vectorized=False, n_resamples=RESAMPLES,
        confidence_level=confidence, method="percentile", random_state=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def mean_ci(values: Sequence[float], confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean of per-seed values and its bootstrap interval: {"mean", "low", "high"}."""
    data = np.asarray(values, dtype=np.float64)
    low, high = _interval((data,), np.mean, confidence, seed)
    return {"mean": float(data.mean()), "low": low, "high": high}


def ratio_ci(numerator: Sequence[float], denominator: Sequence[float], confidence: float = 0.95,
             seed: int = 0) -> dict[str, float]:
    """mean(numerator) / mean(denominator) over paired seeds, with a paired bootstrap interval."""
    top, bottom = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)

    def ratio(a: np.ndarray, b: np.ndarray) -> float:
        return float(a.mean() / b.mean()) if b.mean() else float("inf")

    low, high = _interval((top, bottom), ratio, confidence, seed)
    return {"ratio": ratio(top, bottom), "low": low, "high": high}
