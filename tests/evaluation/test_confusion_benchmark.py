"""benchmarks/confusion.py --quick: the whole benchmark on a tiny world (2 seeds, 4 images, 2 steps)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import load_benchmark


@pytest.fixture(scope="module")
def confusion():
    return load_benchmark("confusion")


@pytest.fixture(scope="module")
def world_only_run(confusion, quick_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("confusion") / "world"
    confusion.main(["--quick", "--world-only", "--out", str(out), "--world-root", str(quick_world.root)])
    return out


@pytest.fixture(scope="module")
def quick_run(confusion, quick_world, world_only_run, tmp_path_factory):
    """The smoke run, reusing the world-only run's world section (as a real run after --world-only does)."""
    out = tmp_path_factory.mktemp("confusion") / "results"
    world_report = world_only_run / "confusion_world.json"
    return out, confusion.main(["--quick", "--out", str(out), "--world-root", str(quick_world.root),
                                "--world-report", str(world_report)])


def test_quick_run_writes_every_result(confusion, quick_run, world_only_run):
    out, report = quick_run
    saved = json.loads((out / "confusion.json").read_text())
    rows = [row.name for row in confusion.ROW_SETS["quick"]]
    assert list(saved["summary"]) == rows
    for entry in saved["summary"].values():
        for key in ("confusion", "leakage", "missing", "clean", "likeness", "retrieval_calibrated"):
            assert entry[key]["low"] <= entry[key]["mean"] <= entry[key]["high"]
        assert 0 <= entry["confusion"]["mean"] <= 2 and 0 <= entry["likeness"]["mean"] <= 1
    for seed in ("0", "1"):
        for row in saved["per_seed"][seed]["rows"].values():
            assert row["images"] == 4 and row["retrieval"]["regions"] > 0
    assert set(saved["goal"]) == {"ratio", "intervals_separate", "met"}
    assert saved["world"]["components"]["judge"]["held_out"]["scenes"] == 8
    assert "| CLIF + TI + joint LoRA (default pipeline) |" in (out / "confusion.md").read_text()
    for picture in ("confusion_samples.png", "confusion_world_samples.png"):
        assert (out / picture).stat().st_size > 1000
    assert report["settings"]["quick"] is True
    world = json.loads((world_only_run / "confusion_world.json").read_text())["world"]
    assert saved["world"] == world and report["settings"]["world_report"].endswith("confusion_world.json")


def test_shards_merge_into_the_report_of_the_whole_run(confusion, quick_run, tmp_path):
    out, _ = quick_run
    whole = json.loads((out / "confusion.json").read_text())
    paths = []
    for seed in ("0", "1"):
        shard = {**whole, "per_seed": {seed: whole["per_seed"][seed]}, "seeds_planned": 1,
                 "settings": {**whole["settings"], "seeds": 1, "seed_start": int(seed)}}
        paths.append(tmp_path / f"shard{seed}" / "confusion.json")
        paths[-1].parent.mkdir()
        paths[-1].write_text(json.dumps(shard))
    (paths[0].parent / "confusion_samples.png").write_bytes((out / "confusion_samples.png").read_bytes())
    merged = confusion.main(["--merge", *map(str, paths), "--out", str(tmp_path / "merged")])
    assert merged["summary"] == whole["summary"] and merged["goal"] == whole["goal"]
    assert (tmp_path / "merged" / "confusion_samples.png").read_bytes() == (out / "confusion_samples.png").read_bytes()
    with pytest.raises(SystemExit, match="two shards"):
        confusion.main(["--merge", str(paths[0]), str(paths[0]), "--out", str(tmp_path / "again")])


def test_quick_needs_an_explicit_output_folder(confusion):
    with pytest.raises(SystemExit):
        confusion.main(["--quick"])


def test_world_only_reports_the_world_without_training(confusion, quick_world, world_only_run):
    out = world_only_run
    saved = json.loads((out / "confusion_world.json").read_text())
    assert saved["world"]["components"]["judge"]["held_out"]["scenes"] == 8
    assert set(saved["world"]["drawing"]) >= {"1_toy", "2_toys"}
    assert set(saved["world"]["drawing_class_words"]["2_toys"]["attribute_accuracy"]) == {"body_shape"}
    assert "Judge on 8 held-out renders" in (out / "confusion_world.md").read_text()
    assert (out / "confusion_world_samples.png").stat().st_size > 1000
    assert not (out / "confusion.json").exists()
    assert confusion.reused_world_report(out / "confusion_world.json", quick_world) == saved["world"]
    other = {**saved, "world": {**saved["world"], "recipe": {**saved["world"]["recipe"], "seed": 1}}}
    (out / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="another world"):
        confusion.reused_world_report(out / "other.json", quick_world)
