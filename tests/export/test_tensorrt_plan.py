"""TensorRT without tensorrt: the missing-package error, profiles, the weight-name map, refit plans."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import numpy as np
import pytest

from clif_serve.contract.folder import ONNX_FILE, WEIGHT_MAP_FILE
from clif_serve.contract.ranges import Range
from clif_serve.errors import ClifServeError
from clif_serve.export.exporter import export_stage
from clif_serve.export.recipe import Profile, load_recipe
from clif_serve.export.tensorrt import (
    OnnxInitializers,
    TensorRTUnavailable,
    UnetRefitter,
    engine_stages,
    stage_profiles,
)
from clif_serve.export.traces import unet_trace
from clif_serve.export.weight_map import (
    WeightRef,
    build_weight_map,
    lora_target_initializers,
    read_weight_map,
)
from clif_serve.lora.math import merge_lora, weight_with_lora
from clif_serve.lora.refit import refit_plan

needs_no_tensorrt = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed"
)


@needs_no_tensorrt
def test_missing_tensorrt_is_a_clear_error(tiny_export):
    from clif_serve.export.tensorrt import build_engines

    with pytest.raises(
        TensorRTUnavailable, match="pip install tensorrt.*ONNX Runtime executor work without it"
    ):
        build_engines(tiny_export, load_recipe("tiny"))


def test_profiles_follow_the_recipe(tiny_export):
    recipe = load_recipe("tiny")
    assert engine_stages(tiny_export) == ("text_encoder", "unet", "vae_decoder")
    (text,) = stage_profiles(tiny_export, "text_encoder", recipe)
    assert text == {
        "input_ids": ((1, 77), (2, 77), (8, 77)),
        "concept_table": ((1, 1, 32), (2, 4, 32), (8, 32, 32)),
    }
    (unet,) = stage_profiles(tiny_export, "unet", recipe)
    assert unet["sample"] == ((1, 4, 16, 16), (2, 4, 32, 32), (8, 4, 64, 64))
    assert unet["timestep"] == ((1,), (2,), (8,))
    assert unet["encoder_hidden_states"] == ((1, 77, 32), (2, 77, 32), (8, 77, 32))
    (vae,) = stage_profiles(tiny_export, "vae_decoder", recipe)
    assert vae == {"latent_sample": unet["sample"]}


def test_several_profiles_for_sdxl(tiny_xl_export):
    square = Profile(Range(1, 2, 2), Range(64, 64, 64), Range(64, 64, 64))
    wide = Profile(Range(1, 2, 8), Range(32, 64, 128), Range(64, 128, 128))
    base = load_recipe("tiny-xl")
    recipe = replace(base, tensorrt=replace(base.tensorrt, profiles=(square, wide)))
    # Merged LoRA: requests without it run on unet_lora (without adapter), so it gets an engine too.
    assert engine_stages(tiny_xl_export) == ("text_encoder", "text_encoder_2", "unet", "unet_lora", "vae_decoder")
    first, second = stage_profiles(tiny_xl_export, "unet", recipe)
    assert first["sample"] == ((1, 4, 32, 32), (2, 4, 32, 32), (2, 4, 32, 32))
    assert second["sample"] == ((1, 4, 16, 32), (2, 4, 32, 64), (8, 4, 64, 64))
    assert second["text_embeds"] == ((1, 32), (2, 32), (8, 32))
    assert second["time_ids"] == ((1, 6), (2, 6), (8, 6))
    assert first["encoder_hidden_states"] == ((1, 77, 64), (2, 77, 64), (2, 77, 64))


@pytest.fixture(scope="module")
def refit_unet(tmp_path_factory, tiny_base):
    """The tiny UNet stage as an export for refittable TensorRT engines writes it: with its weight map."""
    recipe = load_recipe("tiny")
    folder = tmp_path_factory.mktemp("refit") / "unet"
    trace = unet_trace(tiny_base, recipe.deployment(tiny_base.spec))
    record = export_stage(trace, folder, recipe, sorted(tiny_base.spec.lora_targets))
    return folder, record


def test_ordinary_exports_build_no_weight_map(tiny_export):
    assert not (tiny_export.stage_dir("unet") / WEIGHT_MAP_FILE).exists()
    assert "weight_map" not in tiny_export.stage_record("unet")


def test_weight_map_of_the_real_export(refit_unet, tiny_base):
    """Every LoRA target's weight is one initializer holding W^T; named weights keep their names."""
    folder, record = refit_unet
    assert record["weight_map"]["lora_targets_mapped"] == [32, 32]
    weight_map = read_weight_map(folder / WEIGHT_MAP_FILE)
    initializers = OnnxInitializers(folder / ONNX_FILE)
    parameters = dict(tiny_base.unet.named_parameters())
    targets = lora_target_initializers(weight_map, sorted(tiny_base.spec.lora_targets))
    assert len(targets) == len(tiny_base.spec.lora_targets) == 32
    for module, (name, transposed) in targets.items():
        weight = parameters[f"{module}.weight"].detach().numpy()
        assert np.array_equal(initializers[name], weight.T if transposed else weight)
    assert weight_map["unet.conv_in.weight"] == WeightRef("conv_in.weight", False)


def test_weight_map_by_name_by_content_and_ambiguity():
    rng = np.random.default_rng(0)
    linear, conv, twin = rng.normal(size=(3, 5)), rng.normal(size=(2, 3, 1, 1)), rng.normal(size=(4,))
    parameters = {"a.to_q.weight": linear, "conv.weight": conv, "x.bias": twin, "y.bias": twin.copy()}
    initializers = {
        "m.conv.weight": conv,
        "val_7": linear.T.copy(),
        "val_8": twin,
        "m.a.to_q.weight": linear * 2,
    }
    mapping = build_weight_map(initializers, parameters, prefix="m.")
    assert mapping == {
        "m.conv.weight": WeightRef("conv.weight", False),
        "val_7": WeightRef("a.to_q.weight", True),
    }
    with pytest.raises(ClifServeError, match="x.weight is held by no initializer"):
        lora_target_initializers(mapping, ["x"])


@pytest.fixture(scope="module")
def refit_setup(refit_unet, tiny_base):
    folder, _ = refit_unet
    weight_map = read_weight_map(folder / WEIGHT_MAP_FILE)
    targets = lora_target_initializers(weight_map, sorted(tiny_base.spec.lora_targets))
    base = OnnxInitializers(folder / ONNX_FILE)
    return targets, {name: base[name] for name, _ in targets.values()}


def _expected(tiny_base, targets, lora):
    """Engine weights under `lora`, computed independently: the merged PyTorch UNet, in ONNX layout."""
    parameters = dict(
        (merge_lora(tiny_base.unet, lora) if lora is not None else tiny_base.unet).named_parameters()
    )
    expected = {}
    for module, (name, transposed) in targets.items():
        weight = parameters[f"{module}.weight"].detach().numpy()
        expected[name] = weight.T if transposed else weight
    return expected


def test_refit_plan_a_b_a_restores_every_weight(refit_setup, tiny_base, lora_packs):
    targets, base = refit_setup
    lora_a, lora_b = lora_packs["ann"].lora, lora_packs["rex"].lora
    only_a = set(lora_a.modules) - set(lora_b.modules)
    assert len(only_a) == 20  # A touches all 32 projections, B the first 12
    engine = dict(base)  # the engine's weights right after the build: the plain UNet's
    history = []
    for previous, new in [(None, lora_a), (lora_a, lora_b), (lora_b, lora_a), (lora_a, None)]:
        plan = refit_plan(targets, base, previous, new)
        touched = set(previous.modules if previous else ()) | set(new.modules if new else ())
        assert set(plan) == {targets[m][0] for m in touched}
        engine.update(plan)
        want = _expected(tiny_base, targets, new)
        for name in engine:
            np.testing.assert_allclose(engine[name], want[name], atol=1e-6, rtol=0)
        history.append({name: value.copy() for name, value in engine.items()})
    assert all(np.array_equal(history[0][name], history[2][name]) for name in engine)  # A, B, A: A again
    assert all(np.array_equal(history[3][name], base[name]) for name in engine)  # back to the base exactly
    assert refit_plan(targets, base, lora_b, lora_b) == {}


def test_refitting_only_the_new_sets_weights_leaves_stale_ones(refit_setup, lora_packs):
    """The NVIDIA/TensorRT#3628 failure the plan avoids, shown on the same weights."""
    targets, base = refit_setup
    lora_a, lora_b = lora_packs["ann"].lora, lora_packs["rex"].lora
    engine = dict(base)
    engine.update(refit_plan(targets, base, None, lora_a))
    naive = {
        targets[m][0]: weight_with_lora(base[targets[m][0]], m, targets[m][1], lora_b) for m in lora_b.modules
    }
    engine.update(naive)
    stale = [m for m in lora_a.modules if m not in lora_b.modules]
    assert all(not np.array_equal(engine[targets[m][0]], base[targets[m][0]]) for m in stale)


def test_refitter_needs_a_unet_without_merged_lora_and_a_weight_map(tiny_xl_export, tiny_export):
    with pytest.raises(ClifServeError, match="merged.*--merge-lora"):
        UnetRefitter(engine=None, folder=tiny_xl_export)
    with pytest.raises(ClifServeError, match="weight_map.json is missing.*tensorrt.refit = true"):
        UnetRefitter(engine=None, folder=tiny_export)
