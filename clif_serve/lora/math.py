"""LoRA arithmetic: the update a LoRA set makes to a module's weight, applied to a UNet or to one array.

A LoRA set changes the weight `[out, in]` of each module it touches by `alpha / rank * B @ A`.
The exporter merges it into the plain UNet, the onnxruntime adapter writer scales B by it, and
TensorRT refits write base weights plus it.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from clif_serve.lora.naming import LORA_A_SUFFIX, LORA_B_SUFFIX
from clif_serve.lora.weights import LoraWeights


def lora_delta(lora: LoraWeights, module: str) -> torch.Tensor:
    """The weight update `[out, in]` of one module: `alpha / rank * B @ A` (computed in float64)."""
    down = lora.tensors[module + LORA_A_SUFFIX].to(torch.float64)
    up = lora.tensors[module + LORA_B_SUFFIX].to(torch.float64)
    return (lora.scale * (up @ down)).to(torch.float32)


def scaled_up(lora: LoraWeights, name: str) -> torch.Tensor:
    """A LoRA tensor as a graph traced with scale 1 takes it: B multiplied by `alpha / rank`, A as is."""
    value = lora.tensors[name].detach().to("cpu", torch.float64)
    return (value * lora.scale if name.endswith(LORA_B_SUFFIX) else value).to(torch.float32)


def merge_lora(unet: nn.Module, lora: LoraWeights) -> nn.Module:
    """A copy of `unet` with every module the LoRA touches updated by `lora_delta`."""
    merged = copy.deepcopy(unet)
    modules = dict(merged.named_modules())
    with torch.no_grad():
        for module in lora.modules:
            layer = modules[module]
            layer.weight += lora_delta(lora, module).to(layer.weight.dtype)
    return merged


def weight_with_lora(base: np.ndarray, module: str, transposed: bool, lora: LoraWeights | None) -> np.ndarray:
    """One weight array of `module` under `lora` (the base value if it does not touch it).

    `transposed`: the array is stored `[in, out]` (how the dynamo exporter stores Linear weights).
    """
    if lora is None or module not in lora.modules:
        return base
    delta = lora_delta(lora, module).numpy()
    return (base + (delta.T if transposed else delta)).astype(base.dtype)
