"""The inputs of an exported UNet stage, in its signature's order (ONNX Runtime and Triton executors).

A stage with region slots (`unet_lora` of a deployment with `regions` > 0) always takes the region
inputs: a request's regions are padded with zero-weight slots, and a request without regions
sends all-zero ones, which leave the UNet's output exactly that of the plain cross-attention
(`clif_serve.models.regional_attention`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clif_serve.contract.stages import REGION_HIDDEN_STATES, REGION_MASKS, StageSignature
from clif_serve.errors import InputError
from clif_serve.runtime.executor import RegionInputs
from clif_serve.runtime.regions import REGIONS_FIELD


def _padded(tensor: torch.Tensor, slots: int) -> torch.Tensor:
    if tensor.shape[1] > slots:
        raise InputError(REGIONS_FIELD, f"{tensor.shape[1]} regions; this deployment takes at most {slots}")
    padded = tensor.new_zeros(tensor.shape[0], slots, *tensor.shape[2:])
    padded[:, : tensor.shape[1]] = tensor
    return padded


def unet_inputs(
    signature: StageSignature, base: Sequence[torch.Tensor], regions: RegionInputs | None
) -> tuple[torch.Tensor, ...]:
    """`base` (sample, timestep, encoder_hidden_states, SDXL's text_embeds and time_ids), then the
    region inputs where the stage has them; regions for a stage without region inputs are an error."""
    names = signature.input_names
    if REGION_HIDDEN_STATES not in names:
        if regions is not None:
            raise ValueError(f"{signature.name} has no region inputs")
        return tuple(base)
    hidden_spec = signature.inputs[names.index(REGION_HIDDEN_STATES)]
    slots = hidden_spec.dims[1]
    sample, _, context = base[:3]
    if regions is None:
        batch, (height, width) = sample.shape[0], sample.shape[2:]
        regions = RegionInputs(
            context.new_zeros(batch, 0, *context.shape[1:]), sample.new_zeros(batch, 0, height, width)
        )
    values = {REGION_HIDDEN_STATES: _padded(regions.hidden, slots), REGION_MASKS: _padded(regions.masks, slots)}
    return (*base, *(values[name] for name in names[len(base) :]))
