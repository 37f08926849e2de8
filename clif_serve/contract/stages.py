"""The stages of a deployment and the tensors each takes and returns.

A Stable-Diffusion-style deployment has one text-encoder stage per text encoder of the base
model (`text_encoder`, and `text_encoder_2` for SDXL), the UNet (`unet`: plain or with one LoRA
set merged; `unet_lora`: with every attention projection's LoRA A/B as adapter inputs) and the VAE
decoder (`vae_decoder`). `unet_bank` is the UNet with a LoRA bank (`clif_serve.lora.bank`): the
stacked A/B factors of every slot as resident inputs and a per-sample slot index `lora_slot [B]`,
so samples of different LoRA sets share one execution. Every tensor's shape is given with symbolic `Axis` entries:

  batch         samples per call (classifier-free guidance sends two per image)
  height/width  image pixels; latents divide them by the VAE factor
  concept_rows  rows K of the per-sample concept table `[B, K, H]`
  lora_rank     rank of the LoRA inputs of `unet_lora`
  bank_slots    slots S of the LoRA bank of `unet_bank` (slot 0 = no LoRA); one value per export
  bank_rank     rank R every bank slot is padded to; one value per export

`unet_lora` of a deployment with region slots (`regions` R > 0) also takes each sample's region
prompts' token states `region_hidden_states [B, R, L, D]` and their latent masks `region_masks
[B, R, h, w]` (region-aware cross-attention, `clif_serve.models.regional_attention`); R is fixed
per deployment, so requests with and without regions have the same shapes and batch together.

The exporter turns the axes into torch.export dynamic dimensions, the Triton repository into
per-sample dims, the TensorRT builder into optimisation profiles; nobody lists names or shapes
again. Token ids at or above a text encoder's vocabulary size index the concept table.
"""

from __future__ import annotations

from dataclasses import dataclass

from clif_serve.lora.naming import bank_input_names, bank_input_shape, lora_input_names, lora_input_shape
from clif_serve.models.spec import ModelSpec, TextEncoderSpec

UNET = "unet"
UNET_LORA = "unet_lora"
UNET_BANK = "unet_bank"
VAE_DECODER = "vae_decoder"
UNET_STAGES = (UNET, UNET_LORA, UNET_BANK)
# The per-sample slot index input of unet_bank.
LORA_SLOT = "lora_slot"
# SDXL's micro-conditioning: original size, crop top-left, target size.
SDXL_TIME_IDS = 6
REGION_HIDDEN_STATES = "region_hidden_states"
REGION_MASKS = "region_masks"


@dataclass(frozen=True)
class Axis:
    """A dimension that varies between calls: the range it follows, divided by `divisor`."""

    name: str
    divisor: int = 1


BATCH = Axis("batch")
CONCEPT_ROWS = Axis("concept_rows")
LORA_RANK = Axis("lora_rank")
BANK_SLOTS = Axis("bank_slots")
BANK_RANK = Axis("bank_rank")
AXES = ("batch", "height", "width", "concept_rows", "lora_rank", "bank_slots", "bank_rank")
Dim = int | Axis


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a stage: name, numpy dtype name and shape (ints and `Axis` entries)."""

    name: str
    dtype: str
    dims: tuple[Dim, ...]

    @property
    def axes(self) -> tuple[Axis, ...]:
        return tuple(d for d in self.dims if isinstance(d, Axis))


@dataclass(frozen=True)
class StageSignature:
    """A stage's inputs and outputs. `adapter_inputs` (the LoRA A/B of `unet_lora`) have zero-valued
    defaults in the ONNX graph, so the stage runs without them; onnxruntime adapters supply them.
    `bank_inputs` (the LoRA bank of `unet_bank`) are required graph inputs that the stage's owner
    keeps resident and feeds on every call; requests never send them."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    adapter_inputs: tuple[TensorSpec, ...] = ()
    bank_inputs: tuple[TensorSpec, ...] = ()

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    @property
    def traced_inputs(self) -> tuple[TensorSpec, ...]:
        """Every graph input in trace order: the inputs, then the adapter inputs, then the bank inputs."""
        return self.inputs + self.adapter_inputs + self.bank_inputs


def _f32(name: str, *dims: Dim) -> TensorSpec:
    return TensorSpec(name, "float32", dims)


def text_encoder_signature(encoder: TextEncoderSpec) -> StageSignature:
    """`input_ids [B, L]` (int64), `concept_table [B, K, H]` -> `hidden_states [B, L, H]`, `pooled [B, P]`."""
    length, hidden = encoder.max_length, encoder.hidden_size
    return StageSignature(
        encoder.name,
        (TensorSpec("input_ids", "int64", (BATCH, length)), _f32("concept_table", BATCH, CONCEPT_ROWS, hidden)),
        (_f32("hidden_states", BATCH, length, hidden), _f32("pooled", BATCH, encoder.pooled_size)),
    )


def latent_dims(spec: ModelSpec) -> tuple[Dim, ...]:
    """`[B, C, height / vae, width / vae]`."""
    scale = spec.vae_scale_factor
    return (BATCH, spec.latent_channels, Axis("height", scale), Axis("width", scale))


def _unet_inputs(spec: ModelSpec, regions: int = 0) -> list[TensorSpec]:
    latent = latent_dims(spec)
    context = sum(encoder.hidden_size for encoder in spec.text_encoders)
    inputs = [_f32("sample", *latent), _f32("timestep", BATCH), _f32("encoder_hidden_states", BATCH, spec.max_length, context)]
    if spec.kind == "sdxl":
        inputs += [_f32("text_embeds", BATCH, spec.text_encoders[-1].pooled_size), _f32("time_ids", BATCH, SDXL_TIME_IDS)]
    if regions:
        inputs += [
            _f32(REGION_HIDDEN_STATES, BATCH, regions, spec.max_length, context),
            _f32(REGION_MASKS, BATCH, regions, *latent[2:]),
        ]
    return inputs


def unet_signature(spec: ModelSpec, with_lora_inputs: bool = False, regions: int = 0) -> StageSignature:
    """`sample`, `timestep [B]`, `encoder_hidden_states [B, L, D]` (SDXL: `text_embeds`, `time_ids`;
    with `regions` slots: `region_hidden_states [B, R, L, D]`, `region_masks [B, R, h, w]`) -> `noise_pred`."""
    adapters = ()
    if with_lora_inputs:
        adapters = tuple(_f32(name, *lora_input_shape(spec, name, LORA_RANK)) for name in lora_input_names(spec))
    output = (_f32("noise_pred", *latent_dims(spec)),)
    return StageSignature(UNET_LORA if with_lora_inputs else UNET, tuple(_unet_inputs(spec, regions)), output, adapters)


def unet_bank_signature(spec: ModelSpec) -> StageSignature:
    """The UNet inputs and `lora_slot [B]` (int64, 0 = no LoRA), with the bank `[S, R, in]` / `[S, out, R]`
    per LoRA target as bank inputs -> `noise_pred`."""
    inputs = (*_unet_inputs(spec), TensorSpec(LORA_SLOT, "int64", (BATCH,)))
    bank = tuple(_f32(name, *bank_input_shape(spec, name, BANK_SLOTS, BANK_RANK)) for name in bank_input_names(spec))
    return StageSignature(UNET_BANK, inputs, (_f32("noise_pred", *latent_dims(spec)),), bank_inputs=bank)


def vae_decoder_signature(spec: ModelSpec) -> StageSignature:
    """`latent_sample [B, C, h, w]` -> `image [B, 3, H, W]`."""
    return StageSignature(
        VAE_DECODER,
        (_f32("latent_sample", *latent_dims(spec)),),
        (_f32("image", BATCH, 3, Axis("height"), Axis("width")),),
    )


def stage_signature(spec: ModelSpec, stage: str, regions: int = 0) -> StageSignature:
    """The signature of a stage by name; KeyError for a name that is no stage of this model family.

    `regions`: the region slots of `unet_lora` (0: none)."""
    for encoder in spec.text_encoders:
        if encoder.name == stage:
            return text_encoder_signature(encoder)
    if stage == UNET_BANK:
        return unet_bank_signature(spec)
    if stage in UNET_STAGES:
        lora = stage == UNET_LORA
        return unet_signature(spec, with_lora_inputs=lora, regions=regions if lora else 0)
    if stage == VAE_DECODER:
        return vae_decoder_signature(spec)
    raise KeyError(f"{stage!r} is not a stage of an {spec.kind} deployment")


def model_stages(spec: ModelSpec, with_unet_lora: bool, with_unet_bank: bool = False) -> tuple[str, ...]:
    """The stages of a deployment in export order: text encoder(s), unet, (unet_lora,) (unet_bank,) vae_decoder."""
    optional = (*((UNET_LORA,) if with_unet_lora else ()), *((UNET_BANK,) if with_unet_bank else ()))
    return (*spec.text_encoder_names, UNET, *optional, VAE_DECODER)


def tokenizer_dir_name(encoder_name: str) -> str:
    """`text_encoder` -> `tokenizer`, `text_encoder_2` -> `tokenizer_2`."""
    return encoder_name.replace("text_encoder", "tokenizer")
