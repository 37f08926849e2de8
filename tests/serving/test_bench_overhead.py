"""The serving-overhead benchmark's summary (medians and ranges over rounds) and its table; the
measurement itself needs servers and runs in benchmarks/serving_overhead.py."""

from __future__ import annotations

from clif_serve.bench.overhead import RATIOS, Variant, summarise, summary_table
from clif_serve.bench.server_stats import stage_call_overheads
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
    report = {"variants": {"a": Variant("a", RepoOptions(text_encoder_delay_us=2000)).describe()}, "summary": {"a": figures}}
    table = summary_table(report)
    assert table.splitlines()[2].startswith("| a | 4 | 1 | 0 | run | 2000 | 0 | 800 [400 - 1.2e+03] |")


def test_stage_call_overheads_from_server_figures():
    def row(executions, count, total, compute):
        return {"executions": executions, "success_count": count, "success_total_ms": total, "compute_infer_total_ms": compute}

    # Two requests of 2 steps: 4 UNet calls, 2 text-encoder and 2 VAE calls, 8 stage calls in all.
    figures = {
        "clif_pipeline": row(2, 2, 230.0, 228.0),
        "text_encoder": row(2, 2, 4.0, 2.0),
        "unet": row(4, 4, 84.0, 80.0),
        "vae_decoder": row(2, 2, 20.0, 18.0),
    }
    overheads = stage_call_overheads(figures, "unet", in_process_unet_ms=16.0, in_process_loop_ms=50.0)
    assert overheads["stage_calls_per_request"] == 4.0
    assert overheads["unet_compute_over_in_process"] == 20.0 / 16.0
    # 114 ms of pipeline compute per request, 54 ms of it at the stages, 50 ms the loop itself: 10 ms over 4 calls.
    assert overheads["bls_overhead_per_stage_call_ms"] == (114.0 - 54.0 - 50.0) / 4
