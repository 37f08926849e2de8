"""The executor interface the sampling loop drives.

An executor runs the three networks of a Stable-Diffusion-style model: text encoder(s) with a
per-sample concept table, the UNet (one denoising step, optionally with a LoRA adapter) and the
VAE decoder. PyTorch, ONNX Runtime, TensorRT and Triton (BLS) executors implement it; the loop in
`clif_serve.runtime.sampling` knows nothing else about them. Tensors cross this interface as CPU
or device `torch.Tensor`s in float32 (ids in int64).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from clif_serve.lora.weights import LoraWeights
from clif_serve.models.spec import ModelSpec


class Executor(ABC):
    """Runs text encoders, UNet and VAE decoder for one base model described by `spec`."""

    spec: ModelSpec
    # Where the loop keeps latents; executors on an accelerator override it.
    device: torch.device = torch.device("cpu")

    @abstractmethod
    def encode_text(
        self, encoder_index: int, input_ids: torch.Tensor, concept_table: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`input_ids [B, L]`, `concept_table [B, K, H]` -> `(hidden [B, L, H], pooled [B, P])`."""

    @abstractmethod
    def predict_noise(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        text_embeds: torch.Tensor | None = None,
        time_ids: torch.Tensor | None = None,
        lora_id: str | None = None,
    ) -> torch.Tensor:
        """One UNet evaluation. `timestep` is float32 `[B]`; SDXL adds `text_embeds` and `time_ids`.

        `lora_id` is what `acquire_lora` returned for the request (None: no LoRA).
        """

    @abstractmethod
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decoder: scaled latents `[B, C, h, w]` -> images `[B, 3, H, W]` in about [-1, 1]."""

    @abstractmethod
    def acquire_lora(self, lora: LoraWeights | None) -> str | None:
        """Make a request's LoRA set runnable and hold it until `release_lora`; return the id that
        `predict_noise` takes (None: no LoRA). Raises InputError naming the field when this executor
        has no route for it, before any stage runs. Called once per request, with None too."""

    @abstractmethod
    def release_lora(self, lora_id: str | None) -> None:
        """The request that acquired `lora_id` is done with it (it may now be evicted)."""
