"""The serving-overhead benchmark's summary (medians and ranges over rounds) and its table; the
measurement itself needs servers and runs in benchmarks/serving_overhead.py."""

from __future__ import annotations

from clif_serve.bench.overhead import RATIOS, Variant, summarise, summary_table
from clif_serve.serving.options import RepoOptions


def _row(scale: float) -> dict:
    return {
        **{key: scale for key in RATIOS},
        "single": {"throughput_rps": 2.0 * scale},
        "mixed": {"throughput_rps": 1.8 * scale},
        "served": {"p50_ms": 400.0 * scale},
    }


def test_summary_takes_median_and_range_of_every_round():
    rounds = [{"variants": {"a": _row(scale)}} for scale in (1.0, 3.0, 2.0)]
    figures = summarise(rounds, ["a"])["a"]
    for key in RATIOS:
        assert figures[key] == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert figures["single_throughput_rps"] == {"median": 4.0, "min": 2.0, "max": 6.0}
    assert figures["served_p50_ms"]["median"] == 800.0
    report = {"variants": {"a": Variant("a", RepoOptions()).describe()}, "summary": {"a": figures}}
    table = summary_table(report)
    assert table.splitlines()[2].startswith("| a | 4 | 1 | 0 | 2000 | 0 | 800 [400 - 1.2e+03] |")
