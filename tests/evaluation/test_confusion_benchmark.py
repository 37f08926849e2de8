"""benchmarks/confusion.py --quick: the whole benchmark on a tiny world (2 seeds, 4 images, 2 steps)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import load_benchmark


@pytest.fixture(scope="module")
def confusion():
    return load_benchmark("confusion")


def test_quick_run_writes_every_result(confusion, quick_world, tmp_path):
    out = tmp_path / "results"
    report = confusion.main(["--quick", "--out", str(out), "--world-root", str(quick_world.root)])
    saved = json.loads((out / "confusion.json").read_text())
    rows = [row.name for row in confusion.ROW_SETS["quick"]]
    assert list(saved["summary"]) == rows
    for entry in saved["summary"].values():
        for key in ("confusion", "leakage", "missing", "clean", "retrieval_calibrated"):
            assert entry[key]["low"] <= entry[key]["mean"] <= entry[key]["high"]
        assert 0 <= entry["confusion"]["mean"] <= 2
    for seed in ("0", "1"):
        for row in saved["per_seed"][seed]["rows"].values():
            assert row["images"] == 4 and row["retrieval"]["regions"] > 0
    assert set(saved["goal"]) == {"ratio", "intervals_separate", "met"}
    assert saved["world"]["components"]["judge"]["held_out"]["scenes"] == 8
    assert "| CLIF + TI + joint LoRA (default pipeline) |" in (out / "confusion.md").read_text()
    for picture in ("confusion_samples.png", "confusion_world_samples.png"):
        assert (out / picture).stat().st_size > 1000
    assert report["settings"]["quick"] is True


def test_quick_needs_an_explicit_output_folder(confusion):
    with pytest.raises(SystemExit):
        confusion.main(["--quick"])


def test_world_only_reports_the_world_without_training(confusion, quick_world, tmp_path):
    out = tmp_path / "world"
    confusion.main(["--quick", "--world-only", "--out", str(out), "--world-root", str(quick_world.root)])
    saved = json.loads((out / "confusion_world.json").read_text())
    assert saved["world"]["components"]["judge"]["held_out"]["scenes"] == 8
    assert set(saved["world"]["drawing"]) >= {"1_toy", "2_toys"}
    assert "Judge on 8 held-out renders" in (out / "confusion_world.md").read_text()
    assert (out / "confusion_world_samples.png").stat().st_size > 1000
    assert not (out / "confusion.json").exists()
