"""A LoRA set as a file of its own: peft-named float32 tensors, rank and alpha in the metadata.

The concept store keeps one such file per LoRA set, named by the set id (content-addressed), so
a stage model can load the set a request names even after the pack that brought it was removed
or replaced (`clif_serve.concepts.store.ConceptStore.pin_lora`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as save_safetensors_bytes

from clif_serve.errors import PackError
from clif_serve.lora.weights import LoraWeights


def lora_bytes(lora: LoraWeights) -> bytes:
    """The safetensors bytes of a (validated) LoRA set."""
    lora.validate()
    tensors = {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in lora.tensors.items()}
    return save_safetensors_bytes(tensors, metadata={"lora_rank": str(lora.rank), "lora_alpha": repr(float(lora.alpha))})


def read_lora(path: str | Path, set_id: str) -> LoraWeights:
    """The LoRA set stored at `path`, validated, and checked to be set `set_id` (PackError naming `lora_id`)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
        lora = LoraWeights(tensors, rank=int(metadata["lora_rank"]), alpha=float(metadata["lora_alpha"]))
    except (OSError, KeyError, ValueError) as exc:
        raise PackError("lora_id", f"the stored LoRA set {set_id} cannot be read ({exc})") from exc
    except Exception as exc:  # safetensors' own error type for a corrupt file
        raise PackError("lora_id", f"the stored LoRA set {set_id} is corrupt ({exc})") from exc
    lora.validate()
    if lora.set_id != set_id:
        raise PackError("lora_id", f"the file of LoRA set {set_id} holds set {lora.set_id}")
    return lora
