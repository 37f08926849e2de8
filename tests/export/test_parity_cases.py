"""The LoRA parity case of `unet_lora` at a full-size width, and the derived tolerances.

Full-size SD1.5's export was refused because its LoRA case drew random factors of a fixed size:
at a width of 320+ channels that made each LoRA update 5-10x the weight it adapts and the UNet
chaotic, so float32 rounding alone moved its output by O(1). A one-level UNet of SD1.5's width
(320 channels, 768-wide cross attention, 35 M parameters) shows the same within seconds on CPU:
PyTorch in float32 against PyTorch in float64 differed by 0.35 there with the old case.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel

from clif_serve.contract.ranges import Range
from clif_serve.export.parity import reference_outputs
from clif_serve.export.recipe import load_recipe
from clif_serve.export.traces import PARITY_LORA_RELATIVE_NORM, parity_lora, unet_lora_trace
from clif_serve.lora.naming import lora_input_names
from clif_serve.models import tiny
from clif_serve.models.loading import load_base_model
from clif_serve.models.vocab import build_clip_tokenizer


@pytest.fixture(scope="module")
def wide_base(tmp_path_factory):
    """A diffusers folder with an SD1.5-wide one-level UNet and a one-layer 768-wide text encoder."""
    tokenizer = build_clip_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(320,), layers_per_block=1, transformer_layers_per_block=2, sample_size=8,
        down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
        cross_attention_dim=768, attention_head_dim=8,
    )
    config = tiny._text_config(tokenizer, num_hidden_layers=1)
    config.hidden_size, config.intermediate_size, config.num_attention_heads = 768, 64, 12
    pipeline = StableDiffusionPipeline(
        vae=tiny._tiny_vae(), text_encoder=CLIPTextModel(config), tokenizer=tokenizer, unet=unet,
        scheduler=tiny.build_tiny_sd15().scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = tmp_path_factory.mktemp("wide")
    pipeline.save_pretrained(folder)
    return load_base_model(folder)


@pytest.fixture(scope="module")
def wide_stage(wide_base):
    """`unet_lora` of the wide model at 16x16 px (8x8 latents) with rank-16 parity LoRA, as sd15-512 uses."""
    sizes = {"height": Range(16, 16, 32), "width": Range(16, 16, 32), "lora_rank": Range(1, 16, 64)}
    recipe = replace(load_recipe("tiny"), **sizes)
    return unet_lora_trace(wide_base, recipe.deployment(wide_base.spec))


@pytest.fixture(scope="module")
def wide_tolerance(wide_stage):
    """The derived tolerance of the LoRA case (PyTorch reference outputs with their reductions counted)."""
    return reference_outputs(wide_stage).cases[1].tolerance


def test_parity_lora_changes_each_weight_by_a_tenth(wide_base):
    drawn = parity_lora(wide_base.unet, wide_base.spec, 16, torch.Generator().manual_seed(0))
    lora = dict(zip(lora_input_names(wide_base.spec), drawn, strict=True))
    layers = dict(wide_base.unet.named_modules())
    for module in wide_base.spec.lora_targets:
        update = lora[module + ".lora_B.weight"] @ lora[module + ".lora_A.weight"]
        relative = torch.linalg.matrix_norm(update) / torch.linalg.matrix_norm(layers[module].weight)
        assert relative == pytest.approx(PARITY_LORA_RELATIVE_NORM, rel=1e-4), module


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).abs().max() / want.double().abs().max())


def test_the_lora_case_is_well_conditioned_at_full_width(wide_stage, wide_tolerance):
    """PyTorch's own rounding (float32 against float64) stays far inside the case's tolerance, so only a
    wrong export can fail it; the old fixed-size random LoRA failed this by three orders of magnitude."""
    case = wide_stage.cases[1]
    assert case.label.startswith("random LoRA of rank 16")
    with torch.inference_mode():
        single = wide_stage.module(*case.args)
        double = copy.deepcopy(wide_stage.module).double()(*(arg.double() for arg in case.args))
    assert _relative(single, double) < wide_tolerance / 20


def test_the_lora_case_moves_the_output_far_beyond_the_tolerance(wide_stage, wide_tolerance):
    """A LoRA input that were bound to the wrong place, or dropped, cannot pass unnoticed."""
    plain, with_lora = wide_stage.cases
    lora_count = len(wide_stage.zero_default_inputs)
    inputs = with_lora.args[:-lora_count]
    zeros = tuple(torch.zeros_like(arg) for arg in with_lora.args[-lora_count:])
    with torch.inference_mode():
        effect = _relative(wide_stage.module(*inputs, *zeros), wide_stage.module(*with_lora.args))
    assert effect > 100 * wide_tolerance
    assert plain.label == "no adapter (zero initializers)"
