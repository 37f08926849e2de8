"""LoRA arithmetic shared by the exporter, the adapter writer and TensorRT refits.

A LoRA set changes the weight `[out, in]` of each module it touches by `alpha / rank * B @ A`;
`unet_lora` takes A and B of every attention projection as inputs named like the peft keys.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from clif_serve.concepts.lora import LORA_A_SUFFIX, LORA_B_SUFFIX, LoraWeights
from clif_serve.models.spec import ModelSpec


def lora_input_names(spec: ModelSpec) -> tuple[str, ...]:
    """The LoRA inputs of `unet_lora`: A and B of every attention projection, in peft key naming."""
    return tuple(
        name
        for module in sorted(spec.lora_targets)
        for name in (module + LORA_A_SUFFIX, module + LORA_B_SUFFIX)
    )


def lora_input_shape(spec: ModelSpec, name: str, rank: int) -> tuple[int, int]:
    """Shape of one LoRA input at `rank`: A is `[rank, in]`, B is `[out, rank]`."""
    module = name.rsplit(".lora_", 1)[0]
    in_features, out_features = spec.lora_targets[module]
    return (rank, in_features) if name.endswith(LORA_A_SUFFIX) else (out_features, rank)


def lora_delta(lora: LoraWeights, module: str) -> torch.Tensor:
    """The weight update `[out, in]` of one module: `alpha / rank * B @ A` (computed in float64)."""
    down = lora.tensors[module + LORA_A_SUFFIX].to(torch.float64)
    up = lora.tensors[module + LORA_B_SUFFIX].to(torch.float64)
    return (lora.scale * (up @ down)).to(torch.float32)


def merge_lora(unet: nn.Module, lora: LoraWeights) -> nn.Module:
    """A copy of `unet` with every module the LoRA touches updated by `lora_delta`."""
    merged = copy.deepcopy(unet)
    modules = dict(merged.named_modules())
    with torch.no_grad():
        for module in lora.modules:
            layer = modules[module]
            layer.weight += lora_delta(lora, module).to(layer.weight.dtype)
    return merged
