"""An `Executor` whose stages are other Triton models, so `clif_pipeline` runs THE sampling loop.

Each stage call goes through a `StageCall` (inside Triton: a BLS request, see
`backend_utils.bls_call`), so concurrent pipeline instances' calls meet in the stage models'
dynamic batchers. Concept tables are zero-padded to the fixed row count of the stage signature.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from clif_serve.concepts.lora import LoraWeights
from clif_serve.errors import InputError
from clif_serve.export.layout import (
    TEXT_ENCODER_INPUTS,
    TEXT_ENCODER_OUTPUTS,
    UNET_INPUTS,
    UNET_OUTPUTS,
    UNET_SDXL_INPUTS,
    UNET_STAGE,
    VAE_DECODER_INPUTS,
    VAE_DECODER_OUTPUTS,
    VAE_DECODER_STAGE,
)
from clif_serve.models.spec import ModelSpec
from clif_serve.runtime.executor import Executor
from clif_serve.serving.concept_sync import check_lora_servable
from clif_serve.serving.signatures import LORA_ID_INPUT

# (model name, inputs by name, output names) -> outputs by name
StageCall = Callable[[str, Mapping[str, np.ndarray], tuple[str, ...]], Mapping[str, np.ndarray]]


def _array(tensor: torch.Tensor, dtype=np.float32) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to("cpu").numpy(), dtype=dtype)


def pad_concept_table(table: torch.Tensor, rows: int) -> torch.Tensor:
    """Zero-pad `[B, K, H]` to `[B, rows, H]` (the padding rows are never indexed)."""
    if table.shape[1] > rows:
        raise InputError(
            "prompt",
            f"the prompts use {table.shape[1]} distinct concept tokens; this server's export takes at most "
            f"{rows} per prompt (recipe concept_rows)",
        )
    padded = table.new_zeros(table.shape[0], rows, table.shape[2])
    padded[:, : table.shape[1]] = table
    return padded


class TritonExecutor(Executor):
    """Runs the text encoders, UNet and VAE decoder as calls to the repository's stage models."""

    def __init__(
        self,
        spec: ModelSpec,
        call: StageCall,
        concept_rows: int,
        lora_stage: str = "",
        merged_lora: str | None = None,
    ):
        self.spec = spec
        self.call = call
        self.concept_rows = concept_rows
        self.lora_stage = lora_stage
        self.merged_lora = merged_lora  # the LoRA set folded into the plain unet stage, if any

    def encode_text(self, encoder_index, input_ids, concept_table):
        encoder = self.spec.text_encoders[encoder_index]
        ids_name, table_name = TEXT_ENCODER_INPUTS
        table = pad_concept_table(concept_table.to(torch.float32), self.concept_rows)
        outputs = self.call(
            encoder.name,
            {ids_name: _array(input_ids, np.int64), table_name: _array(table)},
            TEXT_ENCODER_OUTPUTS,
        )
        return tuple(torch.from_numpy(np.array(outputs[name])) for name in TEXT_ENCODER_OUTPUTS)

    def predict_noise(
        self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None, lora_id=None
    ):
        # The timestep is a per-sample scalar: sent as [B, 1], the stage sees [B] (config reshape).
        per_sample = (sample, timestep.reshape(-1, 1), encoder_hidden_states)
        feed = {name: _array(value) for name, value in zip(UNET_INPUTS, per_sample, strict=True)}
        if self.spec.kind == "sdxl":
            feed.update(
                {
                    name: _array(value)
                    for name, value in zip(UNET_SDXL_INPUTS, (text_embeds, time_ids), strict=True)
                }
            )
        stage = UNET_STAGE
        if lora_id != self.merged_lora:  # an adapter, or the base UNet of an export with a merged LoRA
            stage = self.lora_stage
            feed[LORA_ID_INPUT] = np.array([[(lora_id or "").encode()]] * sample.shape[0], dtype=np.object_)
        (name,) = UNET_OUTPUTS
        return torch.from_numpy(np.array(self.call(stage, feed, UNET_OUTPUTS)[name]))

    def decode_latents(self, latents):
        (input_name,), (output_name,) = VAE_DECODER_INPUTS, VAE_DECODER_OUTPUTS
        outputs = self.call(VAE_DECODER_STAGE, {input_name: _array(latents)}, VAE_DECODER_OUTPUTS)
        return torch.from_numpy(np.array(outputs[output_name]))

    def load_lora(self, lora: LoraWeights) -> str:
        """The adapter id; the `unet_lora` stage reads its adapter from the concept store by that id."""
        check_lora_servable(lora, self.lora_stage, self.merged_lora)
        return lora.set_id

    def unload_lora(self, lora_id: str) -> None:
        """Nothing to do here: adapters live in the `unet_lora` stage model, keyed by id."""
