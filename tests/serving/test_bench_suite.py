"""The benchmark suite against the real test server, with small counts (the figures are not checked,
only that every measurement is taken, bounded, reported and plotted)."""

from __future__ import annotations

import json

from PIL import Image

from clif_serve.bench.report import CONCURRENCY_PLOT, JSON_FILE, MARKDOWN_FILE, STAGES_PLOT, write_report
from clif_serve.bench.stats import LatencySummary
from clif_serve.bench.suite import BenchConfig, run_suite


def test_latency_summary_percentiles():
    summary = LatencySummary.of([float(v) for v in range(1, 101)])
    assert (summary.count, summary.min, summary.max) == (100, 1.0, 100.0)
    assert summary.p50 == 50.5 and abs(summary.p95 - 95.05) < 1e-9 and abs(summary.p99 - 99.01) < 1e-9


def test_suite_measures_everything_and_writes_the_report(served, tiny_export, tmp_path):
    config = BenchConfig(
        url=served.server.grpc_url, export=tiny_export, steps=2, warmup=1, requests=2,
        concurrency=(1, 2), mixed_clients=2, hotloads=2, hotload_clients=2, max_seconds=60,
    )
    report = run_suite(config)
    paths = write_report(report, tmp_path)
    assert [p.name for p in paths] == [JSON_FILE, MARKDOWN_FILE, CONCURRENCY_PLOT, STAGES_PLOT]
    saved = json.loads((tmp_path / JSON_FILE).read_text())
    assert saved["environment"]["cpu_count"] >= 1 and saved["environment"]["versions"]["onnxruntime"]
    assert saved["in_process"]["ort"]["count"] == 2 and saved["in_process"]["diffusers"]["count"] == 2
    assert set(saved["in_process"]["ort_stages"]) == {"text_encoder", "unet_step", "vae_decode"}
    assert saved["served"]["server_models"]["unet"]["requests"] >= 2 * 2, "two steps per request"
    assert [row["concurrency"] for row in saved["concurrency"]] == [1, 2]
    assert all(row["failed"] == 0 for row in saved["concurrency"])
    assert saved["mixed"]["ratio_mixed_over_single"] > 0
    hot = saved["hotload"]
    assert hot["add_ms"]["count"] == 2 and not hot["first_image_failures"] and hot["background"]["failed"] == 0
    assert len(saved["goals"]) == 5 and all(isinstance(goal["met"], bool) for goal in saved["goals"])
    assert "| goal | measured | target | met |" in (tmp_path / MARKDOWN_FILE).read_text()
    for plot in (CONCURRENCY_PLOT, STAGES_PLOT):
        assert Image.open(tmp_path / plot).size[0] > 100
