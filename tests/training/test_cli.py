"""`clif-serve train` through the real console entry point."""

from __future__ import annotations

import json

from clif_serve.cli import main
from clif_serve.concepts.pack import read_pack
from clif_serve.training.trainer import SUMMARY_FILE


def test_train_command_writes_packs(concept_dirs, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([
        "train", "--model", "tiny", "--concept", f"ann={concept_dirs['ann']}:dog", "--concept",
        f"bob={concept_dirs['bob']}", "--class", "x,cat", "--common", f"cat={concept_dirs['cat']}",
        "--stages", "clif,ti", "--steps", "clif=2,ti=1", "--out", str(out), "--segmentation", "felzenszwalb",
        "--contrastive-weight", "0.25", "--anchor-weight", "2",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert str(out / "ann.safetensors") in printed and "log:" in printed
    assert read_pack(out / "bob.safetensors").class_word == "cat"
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert (summary["contrastive_weight"], summary["anchor_weight"]) == (0.25, 2.0)


def test_train_command_reports_bad_input(concept_dirs, tmp_path, capsys):
    code = main(["train", "--concept", f"ann={tmp_path / 'missing'}:dog", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "concept ann: " in capsys.readouterr().err
