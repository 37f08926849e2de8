"""The parameters of the Python-backend models, as one typed value.

`clif-serve repo` writes a `ModelParameters` into the `parameters` of every Python-backend model's
config (`to_config`); each model decodes it once at initialisation (`from_config`). Triton
parameters are strings: the types live here and nowhere else, and so do the defaults (the
template configs carry none). What a deployment *is* (stages, routing, concept rows, limits) is
not a parameter: every model reads it from the export manifest copied next to its `model.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import get_type_hints

from clif_serve.concepts.limits import DEFAULT_MAX_CONCEPTS, DEFAULT_MAX_PACK_BYTES
from clif_serve.contract.folder import ONNX_FILE
from clif_serve.errors import ModelFolderError


@dataclass(frozen=True)
class ModelParameters:
    """Settings of the Python-backend models; each model uses the fields that concern it."""

    # Stage models: the ONNX file in the version folder and onnxruntime's intra-op threads (0: default).
    model_file: str = ONNX_FILE
    intra_op_threads: int = 0
    # Concept store folder (absolute, or relative to the repository root; "" = the base model's default).
    concept_store: str = ""
    # Whether unet_lora takes LoRA adapters (python backend); False serves it only as the base UNet
    # of a merged export, and packs of other LoRA sets are refused.
    lora_adapters: bool = True
    # LoRA adapters a unet_lora instance keeps built (least recently used dropped first).
    adapter_capacity: int = 16
    # Largest concept pack `clif_concepts` accepts (and every model reads from the store), in bytes.
    max_pack_bytes: int = DEFAULT_MAX_PACK_BYTES
    # Concepts the store may hold (hot-loads beyond it are refused naming `store`).
    max_concepts: int = DEFAULT_MAX_CONCEPTS

    def to_config(self) -> dict[str, str]:
        """As Triton config parameters (strings)."""
        return {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in asdict(self).items()}

    @classmethod
    def from_config(cls, parameters: dict) -> ModelParameters:
        """From a model config's `parameters` (JSON form: `{key: {"string_value": ...}}`); unknown keys are
        errors, absent keys keep their defaults."""
        hints = get_type_hints(cls)
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(parameters) - known)
        if unknown:
            raise ModelFolderError(f"unknown model parameters {unknown}; this clif-serve knows {sorted(known)}")
        values = {}
        for key, entry in parameters.items():
            text = entry.get("string_value", "") if isinstance(entry, dict) else str(entry)
            values[key] = _parse(key, text, hints[key])
        return cls(**values)


def _parse(key: str, text: str, kind) -> object:
    try:
        if kind is bool:
            if text not in ("true", "false"):
                raise ValueError(text)
            return text == "true"
        return kind(text)
    except ValueError as exc:
        raise ModelFolderError(f"model parameter {key}: {text!r} is not a {kind.__name__}") from exc
