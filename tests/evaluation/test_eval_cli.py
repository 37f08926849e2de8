"""`clif-serve eval` end to end: tiny base model, packs, config-built CLIP and DINOv2 folders."""

from __future__ import annotations

import json

from clif_serve.cli import main
from clif_serve.concepts.pack import write_pack
from tests.helpers import random_pack


def test_eval_scores_packs_in_process(tiny_base, tiny_clip_dir, tiny_dino_dir, pair_photos, tmp_path, capsys):
    packs = [write_pack(random_pack(tiny_base, name, "dog", seed=i), tmp_path / f"{name}.safetensors")
             for i, name in enumerate(("ann", "bob"))]
    out = tmp_path / "report"
    code = main([
        "eval", "--model", "tiny", "--concept", str(packs[0]), "--concept", str(packs[1]),
        "--concept-images", f"ann={pair_photos['ann']}", "--concept-images", f"bob={pair_photos['bob']}",
        "--clip", str(tiny_clip_dir), "--dino", str(tiny_dino_dir), "--seeds", "2", "--num-images", "2",
        "--steps", "2", "--segmentation", "masks", "--out", str(out),
    ])
    assert code == 0
    report = json.loads((out / "eval.json").read_text())
    prompts = [row["prompt"] for row in report["prompts"]]
    assert prompts == ["a photo of <ann>", "a photo of <bob>", "a photo of <ann> and <bob>", "a photo of <bob> and <ann>"]
    for row in report["prompts"]:
        assert row["images"] == 4
        assert -1 <= row["clip_t"] <= 1
        expected = {name for name in ("ann", "bob") if f"<{name}>" in row["prompt"]}
        assert set(row["clip_i"]) == expected and set(row["dino"]) == expected
    region = report["region_confusion"]
    assert region["concepts"] == ["ann", "bob"] and region["regions"] == 16  # 4 photos x (body, head) each
    assert 0 <= region["calibrated"] <= 1
    assert set(report["summary"]) == {"all", "single", "multi"}
    assert "| a photo of <ann> and <bob> | 4 |" in (out / "eval.md").read_text()
    assert "Region confusion (ann, bob; 16 regions" in capsys.readouterr().out


def test_eval_refuses_missing_scorers_and_unknown_concepts(tiny_base, tiny_clip_dir, pair_photos, tmp_path, capsys):
    pack = write_pack(random_pack(tiny_base, "ann", "dog"), tmp_path / "ann.safetensors")
    assert main(["eval", "--concept", str(pack), "--out", str(tmp_path / "a")]) == 2
    assert "clip" in capsys.readouterr().err
    code = main(["eval", "--concept", str(pack), "--clip", str(tiny_clip_dir), "--concept-images",
                 f"zed={pair_photos['ann']}", "--out", str(tmp_path / "b")])
    assert code == 2
    assert "concept_images" in capsys.readouterr().err
    assert main(["eval", "--concept", str(pack), "--dino", str(tiny_clip_dir), "--out", str(tmp_path / "c")]) == 2
    assert "dinov2" in capsys.readouterr().err
