"""The benchmark suite against the real test servers (tiny, and tiny-bank for the LoRA bank rows), with
small counts (the figures are not checked, only that every measurement is taken, bounded, reported and
plotted)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from clif_serve.bench.load import LoadResult
from clif_serve.bench.lora_bank import MANY_SETS, MERGED, ONE_SET, SINGLE_SET, TWO_SETS
from clif_serve.bench.report import (
    CONCURRENCY_PLOT,
    JSON_FILE,
    MARKDOWN_FILE,
    STAGES_PLOT,
    served_bar,
    write_report,
)
from clif_serve.bench.stats import LatencySummary
from clif_serve.bench.suite import BenchConfig, run_suite, verdict
from clif_serve.contract.stages import UNET_BANK
from clif_serve.errors import InputError

# The module fixture of a real tritonserver serving tiny-bank (one home for how it is started).
from tests.serving.test_lora_bank_served import bank_server  # noqa: F401


def test_latency_summary_percentiles():
    summary = LatencySummary.of([float(v) for v in range(1, 101)])
    assert (summary.count, summary.min, summary.max) == (100, 1.0, 100.0)
    assert summary.p50 == 50.5 and abs(summary.p95 - 95.05) < 1e-9 and abs(summary.p99 - 99.01) < 1e-9


def test_suite_measures_everything_and_writes_the_report(served, tiny_export, bank_server, tiny_bank_export, tmp_path):  # noqa: F811
    config = BenchConfig(
        url=served.server.grpc_url, export=tiny_export, steps=2, warmup=1, requests=2,
        concurrency=(1, 2), mixed_clients=2, hotloads=2, hotload_clients=2, max_seconds=60, repetitions=3,
        bank_url=bank_server[0].grpc_url, bank_export=tiny_bank_export, bank_steps=1, bank_clients=2, bank_requests=1,
    )
    report = run_suite(config)
    paths = write_report(report, tmp_path)
    assert [p.name for p in paths] == [JSON_FILE, MARKDOWN_FILE, CONCURRENCY_PLOT, STAGES_PLOT]
    saved = json.loads((tmp_path / JSON_FILE).read_text())
    assert saved["environment"]["cpu_count"] >= 1 and saved["environment"]["versions"]["onnxruntime"]
    e2e = saved["end_to_end"]
    assert len(e2e["rounds"]) == 3 and all(r["ort"]["count"] == r["served"]["count"] == 2 for r in e2e["rounds"])
    assert e2e["ort"]["count"] == e2e["diffusers"]["count"] == e2e["served"]["count"] == 6
    assert set(e2e["ort_stages"]) == {"text_encoder", "unet_step", "vae_decode"}
    assert e2e["served_models"]["unet"]["requests"] >= 6 * 2 * 2, "two steps of two samples per request"
    # The served bar of the breakdown plot sums to the pipeline's mean time in the same measurement:
    # within 10 % of the mean latency the client measured for the same requests (the rest is gRPC
    # transport). A mean, like the server's totals: on a loaded machine p50 and mean part ways.
    served_total = sum(served_bar(e2e).values())
    assert abs(served_total - e2e["served"]["mean"]) <= 0.1 * e2e["served"]["mean"], (served_total, e2e["served"])
    assert [row["concurrency"] for row in saved["concurrency"]] == [1, 2]
    assert all(row["failed"] == 0 for row in saved["concurrency"])
    assert len(saved["mixed"]["ratio_mixed_over_single"]) == 3 and min(saved["mixed"]["ratio_mixed_over_single"]) > 0
    assert len(saved["hotload"]) == 3
    for hot in saved["hotload"]:
        assert hot["add_ms"]["count"] == 2 and not hot["first_image_failures"] and hot["background"]["failed"] == 0
    bank = saved["lora_bank"]
    assert [sorted(r["median_ms"]) for r in bank["step"]["repetitions"]] == [sorted((MERGED, ONE_SET, TWO_SETS))] * 3
    assert all(v > 0 for r in bank["step"]["repetitions"] for v in r["median_ms"].values())
    for kind in (MANY_SETS, SINGLE_SET):
        assert [(r["completed"], r["failed"]) for r in bank["served"]["runs"][kind]] == [(2, 0)] * 3
        # Every request went through unet_bank: 2 steps x 2 samples (guidance) x 2 requests x 3 rounds.
        batches = bank["served"]["unet_bank_batches"][kind]
        assert sum(int(size) * count for size, count in batches.items()) == 2 * 2 * 2 * 3, batches
    assert len(saved["goals"]) == 9
    for goal in saved["goals"]:
        assert len(goal["rounds"]) == 3 and goal["min"] <= goal["median"] <= goal["max"]
        assert goal["verdict"] == verdict(goal["rounds"], goal["op"], goal["target"])
    assert [g["goal"].split(" ")[:2] for g in saved["goals"][-2:]] == [["LoRA", "bank"], ["2", "clients"]]
    text = (tmp_path / MARKDOWN_FILE).read_text()
    assert "| goal | median | min – max | target | verdict |" in text
    assert "| LoRA bank step <= 1.15x" in text and f"{UNET_BANK} executions by batch size" in text
    for plot in (CONCURRENCY_PLOT, STAGES_PLOT):
        assert Image.open(tmp_path / plot).size[0] > 100


def test_the_bank_rows_need_a_bank_server(tiny_export):
    with pytest.raises(InputError, match="bank_url"):
        run_suite(BenchConfig(url="127.0.0.1:1", export=tiny_export))


def test_a_goal_is_met_only_when_every_round_meets_it():
    assert verdict([1.01, 1.02, 1.04], "<=", 1.05) == "met"
    assert verdict([1.01, 1.07, 1.04], "<=", 1.05) == "unclear"
    assert verdict([1.2, 1.3, 1.1], "<=", 1.05) == "not met"
    assert verdict([0.95, 0.88, 0.91], ">=", 0.9) == "unclear"


def test_steady_throughput_leaves_out_the_drain():
    # Two clients: three requests of 100 ms finished while both were sending, then one of 50 ms alone.
    result = LoadResult(2, [100.0, 100.0, 100.0, 50.0], wall_s=0.35, finished_s=[0.1, 0.2, 0.3, 0.35], first_client_done_s=0.3)
    assert result.steady_throughput == 2 * 1000 / 100.0
    assert abs(result.throughput - 4 / 0.35) < 1e-9
    assert LoadResult(2).steady_throughput == 0.0
