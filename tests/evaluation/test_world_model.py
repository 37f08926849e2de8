"""The world model is an ordinary base model: it loads, trains concept packs and generates."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from clif_serve.concepts.pack import read_pack
from clif_serve.evaluation.world_model import (
    BUILD_FILE,
    COMPONENT_FIELDS,
    QUICK_RECIPE,
    UnetTraining,
    World,
    build_world,
)
from clif_serve.models.loading import load_base_model
from clif_serve.runtime.factory import torch_pipeline
from clif_serve.runtime.request import GenerationRequest
from clif_serve.training.config import ConceptSource, TrainConfig
from clif_serve.training.segmentation import SegmentationConfig
from clif_serve.training.trainer import train


def test_world_base_loads_trains_and_generates(quick_world, pair_photos, tmp_path):
    base = load_base_model(quick_world.base_dir)
    assert base.spec.kind == "sd15" and base.spec.default_image_size == 64 and base.spec.vae_scale_factor == 4
    config = TrainConfig(
        concepts=tuple(ConceptSource(name, folder, "circle") for name, folder in pair_photos.items()),
        out=tmp_path, model=str(quick_world.base_dir), image_encoders=(str(quick_world.clip_dir),),
        steps={"clif": 1, "ti": 1, "lora": 1}, segmentation=SegmentationConfig(method="masks", min_area=0.005),
        commons=(),
    )
    packs = [read_pack(path) for path in train(config).packs]
    assert packs[0].base_fingerprint == base.spec.fingerprint and packs[0].lora is not None
    images = torch_pipeline(quick_world.base_dir, packs).generate(
        GenerationRequest("a photo of <ann> and <bob>", steps=2, num_images=2)
    )
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()


def test_a_built_world_is_reused_and_records_its_build(quick_world):
    stamps = {name: (quick_world.folder(name) / BUILD_FILE).stat().st_mtime_ns for name in COMPONENT_FIELDS}
    again = build_world(QUICK_RECIPE, quick_world.root)
    assert {name: (again.folder(name) / BUILD_FILE).stat().st_mtime_ns for name in COMPONENT_FIELDS} == stamps
    report = again.report()
    assert set(report["components"]) == set(COMPONENT_FIELDS)
    assert report["components"]["judge"]["held_out"]["scenes"] == QUICK_RECIPE.judge_held_out
    assert json.loads((again.clip_dir / "config.json").read_text())["model_type"] == "clip"


def test_a_world_cut_short_stops_its_unet_and_keeps_the_other_keys(quick_world, tmp_path):
    cut = dataclasses.replace(QUICK_RECIPE, unet_steps=4, unet_stop=1)
    full, short = World(tmp_path, dataclasses.replace(cut, unet_stop=None)), World(tmp_path, cut)
    assert short.key("base") != full.key("base")
    assert {c: short.key(c) for c in ("vae", "clip", "judge")} == {c: full.key(c) for c in ("vae", "clip", "judge")}
    base = load_base_model(quick_world.base_dir)
    latents = (torch.zeros(2, 4, 16, 16), torch.ones(2, 4, 16, 16))
    training = UnetTraining(base, cut, tmp_path / "unet.safetensors")
    training.run(latents, ["a photo of a red circle", ""])
    assert training.step == 1
    assert json.loads((tmp_path / "unet.json").read_text())["step"] == 1
    # The schedule still spans unet_steps: one step of four (no warm-up) leaves the rate near its start, not at its floor.
    assert training.optimizer.param_groups[0]["lr"] > 0.5 * cut.unet_lr


def test_world_parts_build_alone_and_the_base_waits_for_its_inputs(tmp_path):
    with pytest.raises(ValueError, match="parts: unknown world components"):
        build_world(QUICK_RECIPE, tmp_path, ("unet",))
    with pytest.raises(ValueError, match="parts: building base needs vae, clip built first"):
        build_world(QUICK_RECIPE, tmp_path, ("base",))
    world = build_world(QUICK_RECIPE, tmp_path, ("judge",))
    assert (world.judge_dir / BUILD_FILE).is_file()
    assert not world.folder("vae").exists() and not world.complete()
