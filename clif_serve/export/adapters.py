"""onnxruntime LoRA adapter files for the `unet_lora` stage.

An adapter holds a value for *every* LoRA input of `unet_lora`: onnxruntime plans memory with all
inputs that share the symbolic `lora_rank` dimension at one size, so modules the set does not touch
get zero A/B tensors of the set's rank (mixing them with the rank-1 zero initializers fails at run
time). A is stored as is and B multiplied by the set's `alpha / rank` (the graph was traced with a
LoRA scale of 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from clif_serve.concepts.lora import LORA_B_SUFFIX, LoraWeights
from clif_serve.export.lora_math import lora_input_names, lora_input_shape
from clif_serve.models.spec import ModelSpec


def adapter_arrays(lora: LoraWeights, spec: ModelSpec) -> dict[str, np.ndarray]:
    """The adapter parameters of `lora` for every `unet_lora` input of a base model (float32, contiguous)."""
    arrays = {}
    for name in lora_input_names(spec):
        tensor = lora.tensors.get(name)
        if tensor is None:
            arrays[name] = np.zeros(lora_input_shape(spec, name, lora.rank), np.float32)
            continue
        value = tensor.detach().to("cpu").double()
        if name.endswith(LORA_B_SUFFIX):
            value = value * lora.scale
        arrays[name] = np.ascontiguousarray(value.float().numpy())
    return arrays


def write_adapter(lora: LoraWeights, spec: ModelSpec, path: Path) -> Path:
    """Write `lora` as an onnxruntime adapter file (`.onnx_adapter`) for a base model's `unet_lora` stage."""
    lora.validate_against(spec.lora_targets)
    arrays = adapter_arrays(lora, spec)  # OrtValue does not copy: the arrays must outlive export_adapter
    adapter = ort.AdapterFormat()
    adapter.set_parameters({name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in arrays.items()})
    adapter.export_adapter(str(path))
    return path
