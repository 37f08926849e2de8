"""benchmarks/bls_floor.py --quick: the python backend's BLS floor measured on a real tritonserver."""

from __future__ import annotations

import json

import pytest

from tests.helpers import load_benchmark


def test_quick_run_measures_every_cell(tmp_path):
    bls_floor = load_benchmark("bls_floor")
    report = bls_floor.main(["--quick", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "bls_floor.json").read_text())["rows"] == report["rows"]
    holds = sorted({row["hold_ms"] for row in report["rows"]})
    assert holds == list(bls_floor.HOLDS_MS)
    for row in report["rows"]:
        (measured,) = row["rounds"]
        # Triton counts the target's compute: at least the busy loop's hold; the caller waits for all of it.
        assert measured["success_mean_ms"] >= row["hold_ms"]
        assert measured["round_trip_mean_ms"] > measured["success_mean_ms"] > 0
        assert measured["inside_ms"] == pytest.approx(measured["success_mean_ms"] - row["hold_ms"])
    assert "| 18 ms |" in (tmp_path / "bls_floor.md").read_text()


def test_quick_needs_an_explicit_output_folder():
    with pytest.raises(SystemExit):
        load_benchmark("bls_floor").main(["--quick"])
