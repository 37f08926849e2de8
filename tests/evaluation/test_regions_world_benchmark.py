"""benchmarks/regions_world.py --quick: every method judged on the tiny world, results written."""

from __future__ import annotations

import json

import pytest

from tests.helpers import load_benchmark


def test_quick_run_judges_every_method(quick_world, tmp_path):
    regions_world = load_benchmark("regions_world")
    out = tmp_path / "results"
    report = regions_world.main(["--quick", "--out", str(out), "--world-root", str(quick_world.root)])
    saved = json.loads((out / "regions_world.json").read_text())
    assert saved["summary"] == report["summary"]
    assert set(report["summary"]) == {"plain", "attention", "composition", "hybrid (composition first 4 steps)"}
    for row in [*report["summary"].values(), *report["steering"].values()]:
        assert row["images"] == 4  # 2 pairs x 2 images
        assert row["objects_per_image"] >= 0
    for row in report["summary"].values():
        assert 0 <= row["placed_share"] <= row["both_toys_share"] <= 1
    assert "| attention | 4 |" in (out / "regions_world.md").read_text()


def test_quick_needs_an_explicit_output_folder():
    with pytest.raises(SystemExit):
        load_benchmark("regions_world").main(["--quick"])
