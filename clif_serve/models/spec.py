"""What the runtime, the exporters and the concept packs need to know about a base model.

`ModelSpec` is the weight-free description of a loaded base model: its layout (SD1.5 or SDXL),
its text encoders, latent geometry, scheduler and the fingerprint that concept packs are checked
against. It is computed from the PyTorch model once, written into export manifests, and read back
by the ONNX Runtime and Triton executors, so all of them agree on the same facts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

ModelKind = Literal["sd15", "sdxl"]


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder: ids at or above `vocab_size` index the per-sample concept table."""

    name: str
    vocab_size: int
    hidden_size: int
    max_length: int
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    # "last": the final layer normed output (SD1.5); "penultimate": hidden_states[-2] (SDXL).
    hidden_layer: Literal["last", "penultimate"]
    # Width of the pooled output returned by the encoder (projected for CLIPTextModelWithProjection).
    pooled_size: int


@dataclass(frozen=True)
class ModelSpec:
    """Weight-free facts about a base model that every executor and every concept pack relies on."""

    kind: ModelKind
    fingerprint: str
    text_encoders: tuple[TextEncoderSpec, ...]
    latent_channels: int
    sample_size: int
    vae_scale_factor: int
    vae_scaling_factor: float
    scheduler_class: str
    scheduler_config: dict = field(hash=False, compare=False)
    force_zeros_for_empty_prompt: bool = False
    # Image sizes must be multiples of this: the VAE factor times the UNet's total down-sampling.
    image_multiple: int = 8
    # Attention projections a LoRA may target: module path -> (in_features, out_features).
    lora_targets: dict[str, tuple[int, int]] = field(default_factory=dict, hash=False, compare=False)

    @property
    def text_encoder_names(self) -> tuple[str, ...]:
        return tuple(encoder.name for encoder in self.text_encoders)

    @property
    def default_image_size(self) -> int:
        return self.sample_size * self.vae_scale_factor

    @property
    def max_length(self) -> int:
        return min(encoder.max_length for encoder in self.text_encoders)

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (inverse of `from_dict`)."""
        data = asdict(self)
        data["lora_targets"] = {name: list(shape) for name, shape in self.lora_targets.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        """Rebuild a spec written by `to_dict` (for example from an export manifest)."""
        values = dict(data)
        values["text_encoders"] = tuple(TextEncoderSpec(**enc) for enc in values["text_encoders"])
        values["lora_targets"] = {k: tuple(v) for k, v in values.get("lora_targets", {}).items()}
        return cls(**values)


def fingerprint_of(parts: list[tuple[str, bytes]]) -> str:
    """Hash named byte blobs (tokenizer vocabularies, token-embedding matrices) into a short id."""
    digest = hashlib.sha256()
    for name, blob in parts:
        digest.update(json.dumps([name, len(blob)]).encode())
        digest.update(blob)
    return digest.hexdigest()[:24]
