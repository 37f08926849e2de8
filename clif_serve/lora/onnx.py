"""onnxruntime LoRA adapters for the `unet_lora` stage (in-process executor and served stage alike).

An adapter holds a value for *every* LoRA input of `unet_lora`: onnxruntime plans memory with all
inputs that share the symbolic `lora_rank` dimension at one size, so modules the set does not touch
get zero A/B tensors of the set's rank (mixing them with the rank-1 zero initializers fails at run
time). A is stored as is and B multiplied by the set's `alpha / rank` (the graph was traced with a
LoRA scale of 1).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from clif_serve.lora.math import scaled_up
from clif_serve.lora.naming import lora_input_names, lora_input_shape
from clif_serve.lora.weights import LoraWeights
from clif_serve.models.spec import ModelSpec


def adapter_arrays(lora: LoraWeights, spec: ModelSpec) -> dict[str, np.ndarray]:
    """The adapter parameters of `lora` for every `unet_lora` input of a base model (float32, contiguous)."""
    arrays = {}
    for name in lora_input_names(spec):
        if name in lora.tensors:
            arrays[name] = np.ascontiguousarray(scaled_up(lora, name).numpy())
        else:
            arrays[name] = np.zeros(lora_input_shape(spec, name, lora.rank), np.float32)
    return arrays


def write_adapter(lora: LoraWeights, spec: ModelSpec, path: Path) -> Path:
    """Write `lora` as an onnxruntime adapter file (`.onnx_adapter`) for a base model's `unet_lora` stage."""
    lora.validate()
    lora.validate_against(spec.lora_targets)
    arrays = adapter_arrays(lora, spec)  # OrtValue does not copy: the arrays must outlive export_adapter
    adapter = ort.AdapterFormat()
    adapter.set_parameters({name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in arrays.items()})
    adapter.export_adapter(str(path))
    return path


@dataclass(frozen=True)
class ActiveAdapter:
    """A loaded onnxruntime adapter and the RunOptions that activate it (kept together: the options refer to it)."""

    adapter: ort.LoraAdapter
    run_options: ort.RunOptions


def load_adapter(lora: LoraWeights, spec: ModelSpec) -> ActiveAdapter:
    """`lora` as a loaded onnxruntime adapter (through a temporary file: onnxruntime loads files only)."""
    handle, name = tempfile.mkstemp(suffix=".onnx_adapter")
    os.close(handle)
    try:
        adapter = ort.LoraAdapter()
        adapter.Load(str(write_adapter(lora, spec, Path(name))))  # read whole: the file can go at once
    finally:
        os.unlink(name)
    options = ort.RunOptions()
    options.add_active_adapter(adapter)
    return ActiveAdapter(adapter, options)
