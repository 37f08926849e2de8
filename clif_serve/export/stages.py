"""The exported stages: the PyTorch module traced for each, its inputs, dynamic axes and parity cases.

* text encoder(s): `ConceptTextEncoder` itself (input_ids + concept_table -> hidden_states + pooled);
* `unet`: the diffusers UNet (SDXL adds text_embeds/time_ids), optionally with a LoRA merged;
* `unet_lora`: the same UNet with peft LoRA layers on every attention projection whose A/B tensors
  are graph inputs (`torch.func.functional_call`), so a LoRA set is an onnxruntime adapter;
* `vae_decoder`: `vae.decode` (post_quant_conv included).

Inputs are deterministic (seeded) so an export's parity figures are reproducible.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from peft import LoraConfig
from torch import nn
from torch.export import Dim

from clif_serve.concepts.lora import LORA_A_SUFFIX, LoraWeights
from clif_serve.export import layout
from clif_serve.export.lora_math import lora_input_names, lora_input_shape, merge_lora
from clif_serve.export.recipe import Range, Recipe
from clif_serve.models.concept_text_encoder import ConceptTextEncoder
from clif_serve.models.loading import BaseModel
from clif_serve.models.spec import ModelSpec, TextEncoderSpec

# Rank of the LoRA layers traced into `unet_lora`; the rank axis is dynamic, so any rank runs.
_TRACE_RANK = 4
# The adapter name under which peft holds the traced LoRA layers inside the UNet copy.
_ADAPTER = "onnx"


@dataclass(frozen=True)
class ParityCase:
    """One check of a stage: PyTorch arguments and the matching onnxruntime feed."""

    label: str
    args: tuple[torch.Tensor, ...]
    feed: dict[str, np.ndarray]


@dataclass
class Stage:
    """What the exporter needs to trace, save and check one stage."""

    name: str
    module: nn.Module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    example: tuple[torch.Tensor, ...]
    dynamic_shapes: tuple[dict[int, object] | None, ...]
    cases: tuple[ParityCase, ...]
    # Graph inputs that get zero initializers (the LoRA inputs of unet_lora).
    zero_default_inputs: tuple[str, ...] = ()
    # LoRA target modules whose weights TensorRT may refit: the exporter records where they live.
    weight_map_targets: tuple[str, ...] = ()
    manifest_extra: dict = field(default_factory=dict)


StageBuilder = Callable[[], Stage]


def image_multiple(base: BaseModel) -> int:
    """Image sizes must be multiples of this: VAE factor x the UNet's total down-sampling factor."""
    return base.spec.vae_scale_factor * 2 ** (len(base.unet.config.block_out_channels) - 1)


def example_value(size: Range) -> int:
    """A tracing size inside the range that torch.export does not specialise (it does for 0 and 1)."""
    return size.opt if size.opt > 1 or size.max == 1 else 2


def dim(name: str, size: Range, multiple: int = 1):
    """A dynamic dimension over `size` (in units of `multiple`), or None when the range is one value."""
    if size.min == size.max:
        return None
    unit = Dim(name, min=size.min, max=size.max)
    return unit if multiple == 1 else multiple * unit


def _feed(names: tuple[str, ...], args: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    return {name: tensor.numpy() for name, tensor in zip(names, args, strict=True)}


def _cases(names: tuple[str, ...], make: Callable[[int, int, int, torch.Generator], tuple], points) -> tuple:
    """Parity cases at `(label, batch, a, b)` points; `make` builds the inputs from a seeded generator."""
    cases = []
    for seed, (label, batch, first, second) in enumerate(points):
        args = make(batch, first, second, torch.Generator().manual_seed(seed))
        cases.append(ParityCase(label, args, _feed(names, args)))
    return tuple(cases)


def _token_ids(encoder: TextEncoderSpec, batch: int, rows: int, generator: torch.Generator) -> torch.Tensor:
    """Prompts of random length with base tokens and concept ids (>= vocab) spread through them."""
    ids = torch.full((batch, encoder.max_length), encoder.pad_token_id, dtype=torch.int64)
    for sample in range(batch):
        length = int(torch.randint(4, encoder.max_length - 1, (1,), generator=generator))
        body = torch.randint(0, encoder.vocab_size, (length,), generator=generator)
        concept_at = torch.randperm(length, generator=generator)[: min(rows, length)]
        body[concept_at] = encoder.vocab_size + torch.arange(len(concept_at))
        body[body == encoder.eos_token_id] = encoder.bos_token_id
        ids[sample, 0] = encoder.bos_token_id
        ids[sample, 1 : length + 1] = body
        ids[sample, length + 1] = encoder.eos_token_id
    return ids


def text_encoder_stage(base: BaseModel, index: int, recipe: Recipe) -> Stage:
    """Stage of text encoder `index`: `ConceptTextEncoder` traced with a dynamic batch and table size."""
    encoder = base.spec.text_encoders[index]
    module = ConceptTextEncoder(base.text_encoders[index], encoder).eval()

    def make(batch: int, rows: int, _unused: int, generator: torch.Generator) -> tuple:
        table = torch.randn(batch, rows, encoder.hidden_size, generator=generator)
        return _token_ids(encoder, batch, rows, generator), table

    batch, rows = recipe.batch, recipe.concept_rows
    names = layout.TEXT_ENCODER_INPUTS
    points = [("opt", example_value(batch), rows.opt, 0), ("min", batch.min, rows.min, 0)]
    batch_dim = dim("batch", batch)
    return Stage(
        name=encoder.name,
        module=module,
        input_names=names,
        output_names=layout.TEXT_ENCODER_OUTPUTS,
        example=make(example_value(batch), example_value(rows), 0, torch.Generator().manual_seed(99)),
        dynamic_shapes=({0: batch_dim}, {0: batch_dim, 1: dim("concept_rows", rows)}),
        cases=_cases(names, make, points),
        manifest_extra={"vocab_size": encoder.vocab_size, "max_length": encoder.max_length},
    )


class UNetModule(nn.Module):
    """The UNet with positional inputs in layout order; LoRA A/B tensors (if any) come last."""

    def __init__(self, unet: nn.Module, sdxl: bool, lora_params: tuple[str, ...] = ()):
        super().__init__()
        self.unet = unet
        self.sdxl = sdxl
        self.lora_params = lora_params

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        sample, timestep, hidden, *rest = inputs
        added = None
        if self.sdxl:
            added = {"text_embeds": rest[0], "time_ids": rest[1]}
            rest = rest[2:]
        kwargs = {"encoder_hidden_states": hidden, "added_cond_kwargs": added, "return_dict": False}
        if not self.lora_params:
            return self.unet(sample, timestep, **kwargs)[0]
        weights = dict(zip(self.lora_params, rest, strict=True))
        return torch.func.functional_call(self.unet, weights, (sample, timestep), kwargs)[0]


def _unet_inputs(base: BaseModel, batch: int, height: int, width: int, generator: torch.Generator) -> tuple:
    spec, config = base.spec, base.unet.config
    scale = spec.vae_scale_factor
    inputs = (
        torch.randn(batch, spec.latent_channels, height // scale, width // scale, generator=generator),
        torch.rand(batch, generator=generator) * 999,
        torch.randn(batch, spec.max_length, config.cross_attention_dim, generator=generator),
    )
    if spec.kind == "sdxl":
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32).repeat(batch, 1)
        inputs += (torch.randn(batch, spec.text_encoders[-1].pooled_size, generator=generator), time_ids)
    return inputs


def _image_points(recipe: Recipe) -> list[tuple[str, int, int, int]]:
    """Parity points: the optimum size at the tracing batch, and the smallest batch at a non-square size."""
    return [
        ("opt", example_value(recipe.batch), recipe.height.opt, recipe.width.opt),
        ("min", recipe.batch.min, recipe.height.min, recipe.width.opt),
    ]


def _latent_dims(base: BaseModel, recipe: Recipe) -> dict[int, object]:
    """Dynamic axes of a latent `[B, C, h, w]`: batch, and h/w in steps of the UNet's down factor."""
    multiple = image_multiple(base)
    latent = multiple // base.spec.vae_scale_factor
    height = dim("height_units", Range(*(v // multiple for v in recipe.height.as_list())), latent)
    width = dim("width_units", Range(*(v // multiple for v in recipe.width.as_list())), latent)
    return {0: dim("batch", recipe.batch), 2: height, 3: width}


def _unet_dynamic_shapes(base: BaseModel, recipe: Recipe) -> tuple:
    latent = _latent_dims(base, recipe)
    batch = {0: latent[0]}
    return (latent, batch, batch) + ((batch, batch) if base.spec.kind == "sdxl" else ())


def unet_stage(base: BaseModel, recipe: Recipe, merged: LoraWeights | None = None) -> Stage:
    """The plain UNet stage, with `merged`'s LoRA folded into the weights when given."""
    unet = base.unet if merged is None else merge_lora(base.unet, merged)
    names = layout.unet_inputs(base.spec)

    def make(batch: int, height: int, width: int, generator: torch.Generator) -> tuple:
        return _unet_inputs(base, batch, height, width, generator)

    example = make(
        example_value(recipe.batch), recipe.height.opt, recipe.width.opt, torch.Generator().manual_seed(99)
    )
    return Stage(
        name=layout.UNET_STAGE,
        module=UNetModule(unet, base.spec.kind == "sdxl").eval(),
        input_names=names,
        output_names=layout.UNET_OUTPUTS,
        example=example,
        dynamic_shapes=_unet_dynamic_shapes(base, recipe),
        cases=_cases(names, make, _image_points(recipe)),
        weight_map_targets=tuple(sorted(base.spec.lora_targets)),
        manifest_extra={"merged_lora": None if merged is None else merged.set_id},
    )


def _random_lora(spec: ModelSpec, rank: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    return tuple(
        torch.randn(lora_input_shape(spec, name, rank), generator=generator) * 0.2
        for name in lora_input_names(spec)
    )


def unet_lora_stage(base: BaseModel, recipe: Recipe) -> Stage:
    """The UNet with every attention projection's LoRA A/B as (zero-initialised) graph inputs."""
    spec = base.spec
    unet = copy.deepcopy(base.unet)
    # alpha == r: peft's scale alpha/r is traced as the constant 1, so adapters carry scale * B.
    unet.add_adapter(
        LoraConfig(r=_TRACE_RANK, lora_alpha=_TRACE_RANK, target_modules=sorted(spec.lora_targets)), _ADAPTER
    )
    lora_names = lora_input_names(spec)
    params = tuple(name.replace(".weight", f".{_ADAPTER}.weight") for name in lora_names)
    module = UNetModule(unet.requires_grad_(False), spec.kind == "sdxl", params).eval()
    base_names = layout.unet_inputs(spec)
    rank = dim("lora_rank", recipe.lora_rank)
    lora_shapes = tuple({0: rank} if name.endswith(LORA_A_SUFFIX) else {1: rank} for name in lora_names)
    zeros = tuple(torch.zeros(lora_input_shape(spec, name, 1)) for name in lora_names)

    (opt, low) = _image_points(recipe)
    plain = _unet_inputs(base, *opt[1:], torch.Generator().manual_seed(0))
    with_lora = _unet_inputs(base, *low[1:], torch.Generator().manual_seed(1))
    lora = _random_lora(spec, recipe.lora_rank.opt, torch.Generator().manual_seed(2))
    cases = (
        ParityCase("no adapter (zero initializers)", plain + zeros, _feed(base_names, plain)),
        ParityCase(
            f"random LoRA of rank {recipe.lora_rank.opt}",
            with_lora + lora,
            _feed(base_names + lora_names, with_lora + lora),
        ),
    )
    example_rank = example_value(recipe.lora_rank)
    return Stage(
        name=layout.UNET_LORA_STAGE,
        module=module,
        input_names=base_names + lora_names,
        output_names=layout.UNET_OUTPUTS,
        example=_unet_inputs(base, *opt[1:], torch.Generator().manual_seed(99))
        + _random_lora(spec, example_rank, torch.Generator().manual_seed(98)),
        dynamic_shapes=_unet_dynamic_shapes(base, recipe) + lora_shapes,
        cases=cases,
        zero_default_inputs=lora_names,
        manifest_extra={"lora_inputs": list(lora_names), "lora_scale_in_graph": 1.0},
    )


class VaeDecoderModule(nn.Module):
    """`vae.decode`: scaled latents -> images in about [-1, 1] (post_quant_conv included)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent_sample, return_dict=False)[0]


def vae_decoder_stage(base: BaseModel, recipe: Recipe) -> Stage:
    """The VAE decoder with dynamic batch and latent size."""
    spec = base.spec
    scale = spec.vae_scale_factor
    names = layout.VAE_DECODER_INPUTS

    def make(batch: int, height: int, width: int, generator: torch.Generator) -> tuple:
        return (
            torch.randn(batch, spec.latent_channels, height // scale, width // scale, generator=generator),
        )

    return Stage(
        name=layout.VAE_DECODER_STAGE,
        module=VaeDecoderModule(base.vae).eval(),
        input_names=names,
        output_names=layout.VAE_DECODER_OUTPUTS,
        example=make(
            example_value(recipe.batch),
            recipe.height.opt,
            recipe.width.opt,
            torch.Generator().manual_seed(99),
        ),
        dynamic_shapes=(_latent_dims(base, recipe),),
        cases=_cases(names, make, _image_points(recipe)),
    )


def stage_builders(
    base: BaseModel, recipe: Recipe, merged: LoraWeights | None = None
) -> list[tuple[str, StageBuilder]]:
    """`(name, build)` for every stage the recipe asks for, in export order; build one at a time
    so that at most one extra copy of the UNet (merged or with LoRA layers) is alive."""
    builders: list[tuple[str, StageBuilder]] = [
        (encoder.name, partial(text_encoder_stage, base, index, recipe))
        for index, encoder in enumerate(base.spec.text_encoders)
    ]
    builders.append((layout.UNET_STAGE, partial(unet_stage, base, recipe, merged)))
    if "lora" in recipe.unet_variants:
        builders.append((layout.UNET_LORA_STAGE, partial(unet_lora_stage, base, recipe)))
    builders.append((layout.VAE_DECODER_STAGE, partial(vae_decoder_stage, base, recipe)))
    return builders
