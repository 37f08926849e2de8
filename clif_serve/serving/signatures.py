"""Per-sample tensor signatures of the stage models (text encoders, UNet, VAE decoder).

Names come from the export contract (`clif_serve.export.layout`); shapes from the `ModelSpec`.
Batch dimensions are left out (the stage models batch dynamically).

The concept table has a *fixed* number of rows per sample, `concept_rows(...)`: the export
recipe's largest K (capped at the `max_length - 2` concept tokens a prompt can hold). Rows a
sample does not use stay zero and are never indexed. A fixed row count makes every text-encoder
request the same shape, so Triton's dynamic batcher can put requests naming *different*
concepts into one batch on every backend (python, native onnxruntime, TensorRT) without ragged
batching.
"""

from __future__ import annotations

from clif_serve.export.layout import (
    TEXT_ENCODER_INPUTS,
    TEXT_ENCODER_OUTPUTS,
    UNET_INPUTS,
    UNET_LORA_STAGE,
    UNET_OUTPUTS,
    UNET_SDXL_INPUTS,
    UNET_STAGE,
    VAE_DECODER_INPUTS,
    VAE_DECODER_OUTPUTS,
    VAE_DECODER_STAGE,
)
from clif_serve.models.spec import ModelSpec, TextEncoderSpec
from clif_serve.serving.protocol import Field

# Input of `unet_lora` that names the adapter of each sample; it routes, it is not fed to ONNX.
LORA_ID_INPUT = "lora_id"
SDXL_TIME_IDS = 6


def concept_rows(spec: ModelSpec, recipe_max_rows: int) -> int:
    """Rows of every sample's concept table: the recipe's maximum, at most the tokens a prompt can hold."""
    return min(recipe_max_rows, spec.max_length - 2)


def _tensors(names: tuple[str, ...], dims: tuple[tuple[int, ...], ...]) -> tuple[Field, ...]:
    return tuple(
        Field(name, "FP32", optional=False, dims=shape) for name, shape in zip(names, dims, strict=True)
    )


def text_encoder_signature(
    encoder: TextEncoderSpec, rows: int
) -> tuple[tuple[Field, ...], tuple[Field, ...]]:
    """`input_ids [L]` (INT64), `concept_table [K, H]` -> `hidden_states [L, H]`, `pooled [P]`."""
    ids_name, table_name = TEXT_ENCODER_INPUTS
    inputs = (
        Field(ids_name, "INT64", optional=False, dims=(encoder.max_length,)),
        Field(table_name, "FP32", optional=False, dims=(rows, encoder.hidden_size)),
    )
    outputs = _tensors(
        TEXT_ENCODER_OUTPUTS, ((encoder.max_length, encoder.hidden_size), (encoder.pooled_size,))
    )
    return inputs, outputs


def unet_signature(spec: ModelSpec, with_lora: bool = False) -> tuple[tuple[Field, ...], tuple[Field, ...]]:
    """`sample [C, h, w]`, `timestep` (per-sample scalar), `encoder_hidden_states [L, D]` (+ SDXL, + lora_id)."""
    latent = (spec.latent_channels, -1, -1)
    sample, timestep, hidden = UNET_INPUTS
    context = sum(encoder.hidden_size for encoder in spec.text_encoders)
    inputs = [
        Field(sample, "FP32", optional=False, dims=latent),
        Field(timestep, "FP32", optional=False, dims=(1,), reshape=()),
        Field(hidden, "FP32", optional=False, dims=(spec.max_length, context)),
    ]
    if spec.kind == "sdxl":
        inputs += _tensors(UNET_SDXL_INPUTS, ((spec.text_encoders[-1].pooled_size,), (SDXL_TIME_IDS,)))
    if with_lora:
        inputs.append(Field(LORA_ID_INPUT, "BYTES", optional=False))
    return tuple(inputs), _tensors(UNET_OUTPUTS, (latent,))


def vae_decoder_signature(spec: ModelSpec) -> tuple[tuple[Field, ...], tuple[Field, ...]]:
    """`latent_sample [C, h, w]` -> `image [3, H, W]`."""
    return _tensors(VAE_DECODER_INPUTS, ((spec.latent_channels, -1, -1),)), _tensors(
        VAE_DECODER_OUTPUTS, ((3, -1, -1),)
    )


def stage_signature(spec: ModelSpec, stage: str, rows: int) -> tuple[tuple[Field, ...], tuple[Field, ...]]:
    """Inputs and outputs of a stage model by name (`text_encoder`, `text_encoder_2`, `unet`, ...);
    `rows` is the concept-table row count (`concept_rows`)."""
    for encoder in spec.text_encoders:
        if encoder.name == stage:
            return text_encoder_signature(encoder, rows)
    if stage in (UNET_STAGE, UNET_LORA_STAGE):
        return unet_signature(spec, with_lora=stage == UNET_LORA_STAGE)
    if stage == VAE_DECODER_STAGE:
        return vae_decoder_signature(spec)
    raise KeyError(f"{stage!r} is not a stage of this model")
