"""Diffusion-stage regularisers (stage-1 loss kept, trust region) and per-stage pack snapshots."""

from __future__ import annotations

import json

import pytest
import torch

from clif_serve.concepts.pack import read_pack
from clif_serve.errors import InputError
from clif_serve.training.regularisers import anchor_penalty
from clif_serve.training.trainer import LOG_FILE, SUMMARY_FILE, prepare, train
from tests.training.test_train import make_config


def test_anchor_penalty_is_the_mean_relative_squared_distance(tiny_base):
    from clif_serve.concepts.create import new_pack
    from clif_serve.training.tables import ConceptTables

    tables = ConceptTables([new_pack(tiny_base, "ann", "dog"), new_pack(tiny_base, "bob", "cat")], ["text_encoder"])
    anchors = [tables.tables[0].detach().clone()]
    with torch.no_grad():
        assert float(anchor_penalty(tables, anchors)) == 0.0
        tables.tables[0][0] *= 2  # one of four rows moves by its own length: (1 + 0 + 0 + 0) / 4
        assert float(anchor_penalty(tables, anchors)) == pytest.approx(0.25)


def _drift(result) -> float:
    first = read_pack(result.stage_packs["clif"][0]).embeddings["text_encoder"]
    last = read_pack(result.packs[0]).embeddings["text_encoder"]
    return float((last - first).norm() / first.norm())


def test_stage_packs_and_the_trust_region(concept_dirs, tmp_path):
    steps = {"clif": 3, "ti": 6, "lora": 2}
    lr = {"clif": 1e-3, "ti": 5e-2, "lora": 1e-4}
    free = train(make_config(concept_dirs, tmp_path / "free", steps=steps, stage_packs=True, lr=lr, contrastive_weight=0.0))
    assert set(free.stage_packs) == {"clif", "ti", "lora"}
    assert [p.parent.name for p in free.stage_packs["ti"]] == ["ti", "ti"]
    assert read_pack(free.stage_packs["ti"][0]).lora is None and read_pack(free.stage_packs["lora"][0]).lora is not None
    for snapshot, final in zip(free.stage_packs["lora"], free.packs, strict=True):
        assert torch.equal(read_pack(snapshot).embeddings["text_encoder"], read_pack(final).embeddings["text_encoder"])
    anchored = train(make_config(concept_dirs, tmp_path / "anchored", steps=steps, stage_packs=True, lr=lr,
                                 contrastive_weight=0.0, anchor_weight=100.0))
    assert torch.equal(  # stage 1 is the same run in both
        read_pack(free.stage_packs["clif"][0]).embeddings["text_encoder"],
        read_pack(anchored.stage_packs["clif"][0]).embeddings["text_encoder"],
    )
    assert _drift(anchored) < 0.5 * _drift(free)
    records = [r for r in anchored.records if r["stage"] != "clif"]
    assert all(r["loss"] == pytest.approx(r["diffusion"] + 100.0 * r["anchor"], rel=1e-5) for r in records)


def _diffusion_records(out) -> list[dict]:
    records = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    return [record for record in records if record["stage"] in ("ti", "lora")]


def test_kept_contrastive_term_is_in_the_diffusion_stages(concept_dirs, tmp_path):
    """With a weight, a run with a clif stage keeps its loss in ti and lora."""
    train(make_config(concept_dirs, tmp_path, steps={"clif": 2, "ti": 3, "lora": 1}, contrastive_weight=0.5))
    diffusion = _diffusion_records(tmp_path)
    assert [r["stage"] for r in diffusion] == ["ti"] * 3 + ["lora"]
    assert all(r["loss"] == pytest.approx(r["diffusion"] + 0.5 * r["kept_contrastive"], rel=1e-5) for r in diffusion)
    assert json.loads((tmp_path / SUMMARY_FILE).read_text())["contrastive_weight"] == 0.5


def test_a_run_without_a_clif_stage_or_with_weight_zero_trains_on_the_diffusion_loss(concept_dirs, tmp_path):
    """No stage-1 loss to keep (ti, lora only: the weight does nothing, no image tower is loaded), or
    the default, the CLIF reference (weight 0): no kept term."""
    ti_only = make_config(concept_dirs, tmp_path / "ti", stages=("ti",), steps={"ti": 2}, contrastive_weight=1.0)
    assert not ti_only.keeps_stage_one_loss
    assert prepare(ti_only).towers == []
    reference = make_config(concept_dirs, tmp_path / "reference", steps={"clif": 1, "ti": 2}, stages=("clif", "ti"))
    assert reference.contrastive_weight == 0.0
    for config in (ti_only, reference):
        train(config)
        records = _diffusion_records(config.out)
        assert len(records) == 2 and all("kept_contrastive" not in r and r["loss"] == r["diffusion"] for r in records)
        assert json.loads((config.out / SUMMARY_FILE).read_text())["contrastive_weight"] == 0.0


def test_resume_restores_the_anchor(concept_dirs, tmp_path):
    settings = dict(stages=("clif", "ti"), anchor_weight=1.0, lr={"clif": 1e-3, "ti": 2e-2, "lora": 1e-4})
    straight = train(make_config(concept_dirs, tmp_path / "a", steps={"clif": 3, "ti": 4}, **settings))
    train(make_config(concept_dirs, tmp_path / "b", steps={"clif": 3, "ti": 2}, **settings))
    resumed = train(make_config(concept_dirs, tmp_path / "b", steps={"clif": 3, "ti": 4}, resume=True, **settings))
    for first, second in zip(straight.packs, resumed.packs, strict=True):
        assert torch.equal(read_pack(first).embeddings["text_encoder"], read_pack(second).embeddings["text_encoder"])


def test_bad_regulariser_settings_are_refused(concept_dirs, tmp_path):
    with pytest.raises(InputError, match="anchor_weight"):
        make_config(concept_dirs, tmp_path, anchor_weight=-1.0).validate()
    with pytest.raises(InputError, match="contrastive_weight"):
        make_config(concept_dirs, tmp_path, contrastive_weight=-0.5).validate()
    make_config(concept_dirs, tmp_path, stages=("clif",), contrastive_weight=1.0).validate()  # nothing to keep it in
