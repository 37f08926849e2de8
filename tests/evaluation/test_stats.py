"""Bootstrap intervals over seeds."""

from __future__ import annotations

import numpy as np

from clif_serve.evaluation.stats import mean_ci, ratio_ci


def test_mean_interval_contains_the_mean_and_narrows_with_more_seeds():
    rng = np.random.default_rng(0)
    few, many = rng.normal(0.4, 0.1, 10), rng.normal(0.4, 0.1, 200)
    small, large = mean_ci(few), mean_ci(many)
    assert small["low"] < small["mean"] < small["high"]
    assert large["high"] - large["low"] < small["high"] - small["low"]
    assert mean_ci(few) == small, "seeded: the same values give the same interval"


def test_constant_values_give_a_point_interval():
    assert mean_ci([0.5] * 10) == {"mean": 0.5, "low": 0.5, "high": 0.5}


def test_paired_ratio():
    baseline = np.array([0.8, 0.9, 1.0, 0.7, 0.85, 0.95, 0.75, 0.9, 1.1, 0.8])
    ratio = ratio_ci(baseline * 0.4, baseline)
    assert abs(ratio["ratio"] - 0.4) < 1e-12
    assert abs(ratio["low"] - 0.4) < 1e-9 and abs(ratio["high"] - 0.4) < 1e-9, "paired: an exact multiple has no spread"
    noisy = ratio_ci(baseline * 0.4 + np.linspace(-0.05, 0.05, 10), baseline)
    assert noisy["low"] < 0.4 < noisy["high"]
