"""End-to-end training on the tiny models: frozen weights, pack sets, SDXL, resume, objectives."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from clif_serve.concepts.create import class_word_embeddings
from clif_serve.concepts.pack import read_pack
from clif_serve.concepts.registry import ConceptRegistry
from clif_serve.runtime.pipeline import ConceptPipeline
from clif_serve.runtime.request import GenerationRequest
from clif_serve.runtime.torch_executor import TorchExecutor
from clif_serve.training.config import CommonSource, ConceptSource, TrainConfig
from clif_serve.training.trainer import LOG_FILE, prepare, train

STEPS = {"clif": 6, "ti": 3, "lora": 3}


def make_config(concept_dirs, out, **changes) -> TrainConfig:
    config = TrainConfig(
        concepts=(
            ConceptSource("ann", concept_dirs["ann"], "dog"),
            ConceptSource("bob", concept_dirs["bob"], "cat"),
        ),
        commons=(CommonSource("cat", concept_dirs["cat"]),),
        out=out,
        steps=dict(STEPS),
    )
    return replace(config, **changes)


def _frozen_state(prep) -> dict[str, torch.Tensor]:
    modules = {f"text{i}": m for i, m in enumerate(prep.base.text_encoders)}
    modules.update(unet=prep.base.unet, vae=prep.base.vae)
    modules.update({f"tower{i}": t for i, t in enumerate({id(t): t for t in prep.towers}.values())})
    state = {}
    for prefix, module in modules.items():
        for name, parameter in module.named_parameters():
            if "lora_" in name:
                continue
            state[f"{prefix}.{name.replace('.base_layer', '')}"] = parameter.detach().clone()
    return state


@pytest.mark.parametrize("objective", ["clif", "customcontrast", "clif+customcontrast"])
def test_only_concept_rows_change(concept_dirs, tmp_path, objective):
    stages = ("clif", "ti", "lora") if objective == "clif" else ("clif",)
    config = make_config(concept_dirs, tmp_path, stages=stages, objective=objective)
    prep = prepare(config)
    before = _frozen_state(prep)
    result = train(config, prep)
    after = _frozen_state(prep)
    assert before.keys() == after.keys()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed == []
    for path in result.packs:
        pack = read_pack(path)
        initial = class_word_embeddings(prep.base, "dog" if pack.name == "ann" else "cat", 2)
        assert not torch.equal(pack.embeddings["text_encoder"], initial["text_encoder"])
    records = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert [r["stage"] for r in records] == [s for s in stages for _ in range(STEPS[s])]


def test_pack_set_shares_one_lora_and_serves(concept_dirs, tmp_path, tiny_base):
    config = make_config(concept_dirs, tmp_path, steps={"clif": 2, "ti": 2, "lora": 2})
    result = train(config)
    packs = [read_pack(path) for path in result.packs]
    assert [p.name for p in packs] == ["ann", "bob"]
    assert packs[0].lora is not None and packs[0].lora.rank == 16
    assert packs[0].lora.set_id == packs[1].lora.set_id
    assert any(t.abs().sum() > 0 for k, t in packs[0].lora.tensors.items() if k.endswith("lora_B.weight"))
    assert sorted(packs[0].lora.modules) == sorted(tiny_base.spec.lora_targets)
    # The serving side takes the set as it is: registry validation, one shared LoRA, an image.
    from clif_serve.models.loading import load_base_model

    base = load_base_model("tiny")
    pipeline = ConceptPipeline(TorchExecutor(base), base.tokenizers, ConceptRegistry(base.spec, packs))
    image = pipeline.generate(GenerationRequest("a photo of <ann> and <bob>", steps=2, seed=1))
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()


def test_the_lora_stage_does_not_depend_on_what_the_process_drew_before(concept_dirs, tmp_path):
    """Two identical runs with the global generator in different states between them: equal adapters."""
    tensors = []
    for index, global_seed in enumerate((1, 2)):
        torch.manual_seed(global_seed)
        torch.rand(7)
        result = train(make_config(concept_dirs, tmp_path / str(index), stages=("lora",), steps={"lora": 1}))
        tensors.append(read_pack(result.packs[0]).lora.tensors)
    assert tensors[0].keys() == tensors[1].keys()
    assert all(torch.equal(tensors[0][key], tensors[1][key]) for key in tensors[0])


def test_sdxl_trains_both_text_encoders(concept_dirs, tmp_path):
    config = make_config(concept_dirs, tmp_path, model="tiny-xl", stages=("clif", "ti"), steps={"clif": 4, "ti": 2})
    prep = prepare(config)
    result = train(config, prep)
    pack = read_pack(result.packs[0])
    initial = class_word_embeddings(prep.base, "dog", 2)
    assert sorted(pack.embeddings) == ["text_encoder", "text_encoder_2"]
    for encoder in ("text_encoder", "text_encoder_2"):
        assert not torch.equal(pack.embeddings[encoder], initial[encoder])


def test_resume_continues_exactly(concept_dirs, tmp_path):
    straight = train(make_config(concept_dirs, tmp_path / "a", stages=("clif", "ti"), steps={"clif": 4, "ti": 4}))
    interrupted = tmp_path / "b"
    train(make_config(concept_dirs, interrupted, stages=("clif", "ti"), steps={"clif": 4, "ti": 2}))
    resumed = train(make_config(concept_dirs, interrupted, stages=("clif", "ti"), steps={"clif": 4, "ti": 4}, resume=True))
    assert set(resumed.seconds) == {"ti"}  # stage 1 was not run again
    for first, second in zip(straight.packs, resumed.packs, strict=True):
        assert torch.equal(read_pack(first).embeddings["text_encoder"], read_pack(second).embeddings["text_encoder"])
    lines = (interrupted / LOG_FILE).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 1, 2, 3, 4]


def test_resume_with_other_settings_is_refused(concept_dirs, tmp_path):
    from clif_serve.errors import InputError

    train(make_config(concept_dirs, tmp_path, stages=("clif",), steps={"clif": 2}))
    with pytest.raises(InputError, match="resume"):
        train(make_config(concept_dirs, tmp_path, stages=("clif",), steps={"clif": 2}, seed=5, resume=True))


@pytest.mark.parametrize("objective", ["clif", "customcontrast"])
def test_full_batch_stage_one_loss_decreases(concept_dirs, tmp_path, objective):
    config = make_config(
        concept_dirs, tmp_path, stages=("clif",), objective=objective, steps={"clif": 25},
        batch_size={"clif": 512}, lr={"clif": 3e-3},
    )
    records = train(config).records
    assert records[-1]["loss"] < records[0]["loss"] - 0.01


def test_mixed_precision_and_checkpointing_flags_run(concept_dirs, tmp_path):
    config = make_config(
        concept_dirs, tmp_path, mixed_precision="bf16", gradient_checkpointing=True, steps={"clif": 2, "ti": 1, "lora": 1}
    )
    prep = prepare(config)
    result = train(config, prep)
    assert prep.base.unet.dtype == torch.bfloat16 and prep.base.vae.dtype == torch.float32
    packs = [read_pack(path) for path in result.packs]
    assert all(torch.isfinite(p.embeddings["text_encoder"]).all() for p in packs)
    assert packs[0].lora is not None and packs[0].lora.set_id == packs[1].lora.set_id
