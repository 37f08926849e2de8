"""What the exporter traces for each stage: the PyTorch module, example inputs, dynamic axes, parity cases.

Names, dtypes and shapes come from the deployment contract (`clif_serve.contract.stages`): the
example inputs are drawn at sizes chosen per symbolic axis, and every axis whose range is not a
single value becomes a torch.export dynamic dimension.

* text encoder(s): `ConceptTextEncoder` itself (input_ids + concept_table -> hidden_states + pooled);
* `unet`: the diffusers UNet (SDXL adds text_embeds/time_ids), optionally with a LoRA merged;
* `unet_lora`: the same UNet with peft LoRA layers on every attention projection whose A/B tensors
  are graph inputs (`torch.func.functional_call`), so a LoRA set is an onnxruntime adapter; with
  region slots, its attention modules run `clif_serve.models.regional_attention` on the region
  inputs;
* `unet_bank`: the UNet with a `BankLinear` on every attention projection (`clif_serve.lora.bank`):
  the per-sample slot index and the stacked factors of every bank slot are graph inputs;
* `vae_decoder`: `vae.decode` (post_quant_conv included).

Inputs are deterministic (seeded) so an export's parity figures are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from peft import LoraConfig
from torch import nn
from torch.export import Dim as TorchDim

from clif_serve.contract.deployment import Deployment
from clif_serve.contract.ranges import Range
from clif_serve.contract.stages import (
    REGION_MASKS,
    UNET,
    UNET_BANK,
    UNET_LORA,
    VAE_DECODER,
    Axis,
    StageSignature,
    TensorSpec,
)
from clif_serve.lora.bank import slot_buffers, with_bank
from clif_serve.lora.math import merge_lora
from clif_serve.lora.naming import (
    BANK_A_SUFFIX,
    LORA_A_SUFFIX,
    LORA_B_SUFFIX,
    bank_input_names,
    bank_input_shape,
    lora_input_names,
    lora_input_shape,
)
from clif_serve.lora.peft import adapter_parameter
from clif_serve.lora.weights import LoraWeights
from clif_serve.models import regional_attention
from clif_serve.models.concept_text_encoder import ConceptTextEncoder
from clif_serve.models.loading import BaseModel
from clif_serve.models.sharing import sharing_copy
from clif_serve.models.spec import ModelSpec, TextEncoderSpec

# Rank of the LoRA layers traced into `unet_lora`; the rank axis is dynamic, so any rank runs.
_TRACE_RANK = 4
# The adapter name under which peft holds the traced LoRA layers inside the UNet copy.
_ADAPTER = "onnx"
Sizes = Mapping[str, int]
IMAGE_AXES = ("height", "width")


@dataclass(frozen=True)
class ParityCase:
    """One check of a stage: PyTorch arguments and the matching onnxruntime feed."""

    label: str
    args: tuple[torch.Tensor, ...]
    feed: dict[str, np.ndarray]


@dataclass
class StageTrace:
    """What the exporter needs to trace, save and check one stage."""

    signature: StageSignature
    module: nn.Module
    example: tuple[torch.Tensor, ...]
    dynamic_shapes: tuple[dict[int, object] | None, ...]
    cases: tuple[ParityCase, ...]
    record_extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.signature.name

    @property
    def input_names(self) -> tuple[str, ...]:
        """Every graph input in trace order (adapter inputs last)."""
        return tuple(t.name for t in self.signature.traced_inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.signature.output_names

    @property
    def zero_default_inputs(self) -> tuple[str, ...]:
        """Graph inputs that get zero initializers (the LoRA inputs of unet_lora)."""
        return tuple(t.name for t in self.signature.adapter_inputs)

    @property
    def hidden_inputs(self) -> tuple[str, ...]:
        """Graph inputs that are no request's fields (LoRA adapter inputs, the LoRA bank)."""
        return self.zero_default_inputs + tuple(t.name for t in self.signature.bank_inputs)


StageBuilder = Callable[[], StageTrace]


def example_value(size: Range) -> int:
    """A tracing size inside the range that torch.export does not specialise (it does for 0 and 1)."""
    return size.opt if size.opt > 1 or size.max == 1 else 2


def torch_dims(deployment: Deployment) -> Callable[[Axis], object]:
    """Axis -> torch.export dimension (None where the range is one value); one Dim per axis name.

    Image axes move in steps of the model's image multiple: a latent axis is `step * <name>_units`.
    """
    multiple = deployment.spec.image_multiple
    dims = {}
    for name, size in deployment.axis_ranges().items():
        image_axis = name in IMAGE_AXES
        units = size.scaled(multiple) if image_axis else size
        label = f"{name}_units" if image_axis else name
        dims[name] = None if units.min == units.max else TorchDim(label, min=units.min, max=units.max)

    def of(axis: Axis):
        dim = dims[axis.name]
        if dim is None or axis.name not in IMAGE_AXES:
            return dim
        return (multiple // axis.divisor) * dim

    return of


def dynamic_shapes(signature: StageSignature, deployment: Deployment) -> tuple[dict[int, object] | None, ...]:
    """torch.export `dynamic_shapes` for every traced input of a stage."""
    of = torch_dims(deployment)
    shapes = []
    for tensor in signature.traced_inputs:
        axes = {index: of(d) for index, d in enumerate(tensor.dims) if isinstance(d, Axis)}
        shapes.append({index: dim for index, dim in axes.items() if dim is not None} or None)
    return tuple(shapes)


def concrete_shape(tensor: TensorSpec, sizes: Sizes) -> tuple[int, ...]:
    """A tensor's shape with each axis at `sizes[axis]` (image axes in pixels, divided as the axis says)."""
    return tuple(sizes[d.name] // d.divisor if isinstance(d, Axis) else d for d in tensor.dims)


def random_inputs(
    signature: StageSignature, sizes: Sizes, generator: torch.Generator, special: Mapping[str, Callable] | None = None
) -> tuple[torch.Tensor, ...]:
    """Seeded inputs of a stage at `sizes`: standard normal, unless `special[name](shape, generator)`."""
    tensors = []
    for tensor in signature.inputs:
        shape = concrete_shape(tensor, sizes)
        make = (special or {}).get(tensor.name)
        tensors.append(make(shape, generator) if make else torch.randn(shape, generator=generator))
    return tuple(tensors)


def _feed(names: tuple[str, ...], args: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    return {name: tensor.numpy() for name, tensor in zip(names, args, strict=True)}


def _image_points(deployment: Deployment) -> list[tuple[str, dict[str, int]]]:
    """Parity points: the optimum size at the tracing batch, and the smallest batch at a non-square size."""
    d = deployment
    return [
        ("opt", {"batch": example_value(d.batch), "height": d.height.opt, "width": d.width.opt}),
        ("min", {"batch": d.batch.min, "height": d.height.min, "width": d.width.opt}),
    ]


def _cases(signature: StageSignature, make: Callable[[dict, torch.Generator], tuple], points) -> tuple:
    """Parity cases at `(label, sizes)` points; `make` builds the inputs from a seeded generator."""
    cases = []
    for seed, (label, sizes) in enumerate(points):
        args = make(sizes, torch.Generator().manual_seed(seed))
        cases.append(ParityCase(label, args, _feed(signature.input_names, args)))
    return tuple(cases)


def _token_ids(encoder: TextEncoderSpec, rows: int, shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Prompts of random length with base tokens and concept ids (>= vocab) spread through them."""
    batch = shape[0]
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


def text_encoder_trace(base: BaseModel, index: int, deployment: Deployment) -> StageTrace:
    """Text encoder `index`: `ConceptTextEncoder` traced with a dynamic batch and table size."""
    encoder = base.spec.text_encoders[index]
    signature = deployment.signature(encoder.name)

    def make(sizes: dict, generator: torch.Generator) -> tuple:
        def ids(shape, gen):
            return _token_ids(encoder, sizes["concept_rows"], shape, gen)

        return random_inputs(signature, sizes, generator, {"input_ids": ids})

    batch, rows = deployment.batch, deployment.concept_rows
    points = [
        ("opt", {"batch": example_value(batch), "concept_rows": rows.opt}),
        ("min", {"batch": batch.min, "concept_rows": rows.min}),
    ]
    example = {"batch": example_value(batch), "concept_rows": example_value(rows)}
    return StageTrace(
        signature=signature,
        module=ConceptTextEncoder(base.text_encoders[index], encoder).eval(),
        example=make(example, torch.Generator().manual_seed(99)),
        dynamic_shapes=dynamic_shapes(signature, deployment),
        cases=_cases(signature, make, points),
        record_extra={"vocab_size": encoder.vocab_size, "max_length": encoder.max_length},
    )


class UNetModule(nn.Module):
    """The UNet with positional inputs in contract order (region inputs after SDXL's); LoRA A/B
    tensors (if any) come last."""

    def __init__(self, unet: nn.Module, sdxl: bool, lora_params: tuple[str, ...] = (), regional: bool = False):
        super().__init__()
        self.unet = unet
        self.sdxl = sdxl
        self.lora_params = lora_params
        self.regional = regional
        if regional:
            regional_attention.install(unet)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        sample, timestep, hidden, *rest = inputs
        added = None
        if self.sdxl:
            added = {"text_embeds": rest[0], "time_ids": rest[1]}
            rest = rest[2:]
        kwargs = {"encoder_hidden_states": hidden, "added_cond_kwargs": added, "return_dict": False}
        if self.regional:
            levels = regional_attention.unet_levels(self.unet)
            kwargs["cross_attention_kwargs"] = regional_attention.region_kwargs(rest[0], rest[1], levels)
            rest = rest[2:]
        weights = self.graph_weights(tuple(rest))
        if not weights:
            return self.unet(sample, timestep, **kwargs)[0]
        return torch.func.functional_call(self.unet, weights, (sample, timestep), kwargs)[0]

    def graph_weights(self, rest: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """Parameter/buffer name -> the graph input that replaces it (the inputs after the UNet's own)."""
        return dict(zip(self.lora_params, rest, strict=True))


class UNetBankModule(UNetModule):
    """The banked UNet: after the UNet's inputs come `lora_slot [B]` (fed to every BankLinear) and the bank."""

    def __init__(self, unet: nn.Module, sdxl: bool, bank_params: tuple[str, ...], slot_params: tuple[str, ...]):
        super().__init__(unet, sdxl, bank_params)
        self.slot_params = slot_params

    def graph_weights(self, rest: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        slot, *bank = rest
        return dict(zip(self.lora_params, bank, strict=True)) | dict.fromkeys(self.slot_params, slot)


def _unet_inputs(signature: StageSignature, sizes: dict, generator: torch.Generator) -> tuple:
    height, width = sizes["height"], sizes["width"]

    def time_ids(shape, _generator):
        return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32).repeat(shape[0], 1)

    special = {
        "timestep": lambda shape, gen: torch.rand(shape, generator=gen) * 999,
        "time_ids": time_ids,
        REGION_MASKS: _region_masks,
    }
    return random_inputs(signature, sizes, generator, special)


def _region_masks(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Disjoint masks `[B, R, h, w]`: every latent cell belongs to one region or to the background."""
    batch, regions, height, width = shape
    owner = torch.randint(0, regions + 1, (batch, height, width), generator=generator)
    return torch.stack([(owner == region + 1).float() for region in range(regions)], dim=1)


def unet_trace(base: BaseModel, deployment: Deployment, merged: LoraWeights | None = None) -> StageTrace:
    """The plain UNet stage, with `merged`'s LoRA folded into the weights when given."""
    unet = base.unet if merged is None else merge_lora(base.unet, merged)
    signature = deployment.signature(UNET)

    def make(sizes: dict, generator: torch.Generator) -> tuple:
        return _unet_inputs(signature, sizes, generator)

    (_, opt), _ = _image_points(deployment)
    return StageTrace(
        signature=signature,
        module=UNetModule(unet, base.spec.kind == "sdxl").eval(),
        example=make(opt, torch.Generator().manual_seed(99)),
        dynamic_shapes=dynamic_shapes(signature, deployment),
        cases=_cases(signature, make, _image_points(deployment)),
        record_extra={"merged_lora": None if merged is None else merged.set_id},
    )


# Each parity LoRA update B @ A gets this fraction of its base weight's Frobenius norm.
PARITY_LORA_RELATIVE_NORM = 0.1


def parity_lora(unet: nn.Module, spec: ModelSpec, rank: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """LoRA A/B inputs of realistic magnitude for a parity case, in `lora_input_names(spec)` order.

    A is drawn as peft initialises it (kaiming-uniform: U(-1/sqrt(in), 1/sqrt(in))); B is random
    and scaled so that every module's update B @ A is PARITY_LORA_RELATIVE_NORM (10 %) of the
    Frobenius norm of the weight it adapts. That moves the UNet's output far beyond the parity
    tolerance (a LoRA input bound to the wrong place or scaled wrongly is caught), yet keeps the
    network where trained LoRAs keep it, a small relative change of each weight. Random factors of
    a fixed size do not: at full width they made the updates 5-10x the base weights and the UNet
    chaotic, so fp32 rounding alone moved its output by O(1) and no export could pass.
    """
    layers = dict(unet.named_modules())
    tensors = {}
    for module in sorted(spec.lora_targets):
        weight = layers[module].weight.detach().to(torch.float32)
        out_features, in_features = weight.shape
        bound = 1.0 / math.sqrt(in_features)
        down = (torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound
        up = torch.randn(out_features, rank, generator=generator)
        up *= PARITY_LORA_RELATIVE_NORM * torch.linalg.matrix_norm(weight) / torch.linalg.matrix_norm(up @ down)
        tensors[module + LORA_A_SUFFIX], tensors[module + LORA_B_SUFFIX] = down, up
    return tuple(tensors[name] for name in lora_input_names(spec))


def unet_lora_trace(base: BaseModel, deployment: Deployment) -> StageTrace:
    """The UNet with every attention projection's LoRA A/B as (zero-initialised) graph inputs."""
    spec = base.spec
    signature = deployment.signature(UNET_LORA)
    unet = sharing_copy(base.unet)
    # alpha == r: peft's scale alpha/r is traced as the constant 1, so adapters carry scale * B.
    unet.add_adapter(
        LoraConfig(r=_TRACE_RANK, lora_alpha=_TRACE_RANK, target_modules=sorted(spec.lora_targets)), _ADAPTER
    )
    lora_names = lora_input_names(spec)
    params = tuple(adapter_parameter(name, _ADAPTER) for name in lora_names)
    regional = deployment.region_slots > 0
    module = UNetModule(unet.requires_grad_(False), spec.kind == "sdxl", params, regional).eval()
    zeros = tuple(torch.zeros(lora_input_shape(spec, name, 1)) for name in lora_names)

    (_, opt), (_, low) = _image_points(deployment)
    plain = _unet_inputs(signature, opt, torch.Generator().manual_seed(0))
    with_lora = _unet_inputs(signature, low, torch.Generator().manual_seed(1))
    lora = parity_lora(base.unet, spec, deployment.lora_rank.opt, torch.Generator().manual_seed(2))
    all_names = signature.input_names + lora_names
    cases = (
        ParityCase("no adapter (zero initializers)", plain + zeros, _feed(signature.input_names, plain)),
        ParityCase(f"random LoRA of rank {deployment.lora_rank.opt}", with_lora + lora, _feed(all_names, with_lora + lora)),
    )
    example_rank = example_value(deployment.lora_rank)
    return StageTrace(
        signature=signature,
        module=module,
        example=_unet_inputs(signature, opt, torch.Generator().manual_seed(99))
        + parity_lora(base.unet, spec, example_rank, torch.Generator().manual_seed(98)),
        dynamic_shapes=dynamic_shapes(signature, deployment),
        cases=cases,
        record_extra={"lora_inputs": list(lora_names), "lora_scale_in_graph": 1.0, "regions": deployment.region_slots},
    )


def random_bank(
    unet: nn.Module, spec: ModelSpec, slots: int, rank: int, generator: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """A bank (in `bank_input_names` order) whose slot s >= 1 holds a `parity_lora` of rank
    max(1, rank - s + 1), zero-padded to `rank` as fills leave it; slot 0 is zero."""
    bank = {name: torch.zeros(bank_input_shape(spec, name, slots, rank)) for name in bank_input_names(spec)}
    lora_names = lora_input_names(spec)
    for slot in range(1, slots):
        used = max(1, rank - slot + 1)
        factors = dict(zip(lora_names, parity_lora(unet, spec, used, generator), strict=True))
        for name, value in bank.items():
            module = name.rsplit(".lora_bank_", 1)[0]
            if name.endswith(BANK_A_SUFFIX):
                value[slot, :used, :] = factors[module + LORA_A_SUFFIX]
            else:
                value[slot, :, :used] = factors[module + LORA_B_SUFFIX]
    return tuple(bank.values())


def _slots(batch: int, slots: int) -> torch.Tensor:
    """Every sample a different slot where the bank has enough: 0, 1, ..., wrapping."""
    return torch.arange(batch, dtype=torch.int64) % slots


def unet_bank_trace(base: BaseModel, deployment: Deployment) -> StageTrace:
    """The UNet with a LoRA bank on every attention projection: slot index and bank tensors as graph inputs."""
    spec = base.spec
    signature = deployment.signature(UNET_BANK)
    slots, rank = deployment.bank_slots, deployment.bank_rank
    unet = with_bank(base.unet, spec, slots, rank, share_weights=True)
    module = UNetBankModule(unet, spec.kind == "sdxl", bank_input_names(spec), slot_buffers(spec)).eval()
    unet_inputs = StageSignature(UNET_BANK, signature.inputs[:-1], signature.outputs)

    def make(sizes: dict, generator: torch.Generator, bank: bool = True) -> tuple:
        head = _unet_inputs(unet_inputs, sizes, generator)
        batch = head[0].shape[0]
        if not bank:
            zeros = tuple(torch.zeros(bank_input_shape(spec, n, slots, rank)) for n in bank_input_names(spec))
            return (*head, torch.zeros(batch, dtype=torch.int64), *zeros)
        return (*head, _slots(batch, slots), *random_bank(base.unet, spec, slots, rank, generator))

    (_, opt), (_, low) = _image_points(deployment)
    mixed = dict(low, batch=min(deployment.batch.max, max(3, low["batch"])))
    names = tuple(t.name for t in signature.traced_inputs)
    cases = []
    for seed, (label, sizes, bank) in enumerate(
        [("empty bank, slot 0", opt, False), (f"random bank, {mixed['batch']} samples in slots 0, 1, 2..", mixed, True)]
    ):
        args = make(sizes, torch.Generator().manual_seed(seed), bank)
        cases.append(ParityCase(label, args, _feed(names, args)))
    return StageTrace(
        signature=signature,
        module=module,
        example=make(opt, torch.Generator().manual_seed(99)),
        dynamic_shapes=dynamic_shapes(signature, deployment),
        cases=tuple(cases),
        record_extra={"bank_inputs": list(bank_input_names(spec)), "bank_slots": slots, "bank_rank": rank},
    )


class VaeDecoderModule(nn.Module):
    """`vae.decode`: scaled latents -> images in about [-1, 1] (post_quant_conv included)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent_sample, return_dict=False)[0]


def vae_decoder_trace(base: BaseModel, deployment: Deployment) -> StageTrace:
    """The VAE decoder with dynamic batch and latent size."""
    signature = deployment.signature(VAE_DECODER)

    def make(sizes: dict, generator: torch.Generator) -> tuple:
        return random_inputs(signature, sizes, generator)

    (_, opt), _ = _image_points(deployment)
    return StageTrace(
        signature=signature,
        module=VaeDecoderModule(base.vae).eval(),
        example=make(opt, torch.Generator().manual_seed(99)),
        dynamic_shapes=dynamic_shapes(signature, deployment),
        cases=_cases(signature, make, _image_points(deployment)),
    )


def stage_builders(
    base: BaseModel, deployment: Deployment, merged: LoraWeights | None = None
) -> list[tuple[str, StageBuilder]]:
    """`(name, build)` for every stage of the deployment, in export order; build one at a time
    so that at most one extra copy of the UNet (merged or with LoRA layers) is alive."""
    builders: dict[str, StageBuilder] = {
        encoder.name: partial(text_encoder_trace, base, index, deployment)
        for index, encoder in enumerate(base.spec.text_encoders)
    }
    builders[UNET] = partial(unet_trace, base, deployment, merged)
    builders[UNET_LORA] = partial(unet_lora_trace, base, deployment)
    builders[UNET_BANK] = partial(unet_bank_trace, base, deployment)
    builders[VAE_DECODER] = partial(vae_decoder_trace, base, deployment)
    return [(name, builders[name]) for name in deployment.stages]
