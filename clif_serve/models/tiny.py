"""The embedded default models: tiny SD1.5- and SDXL-shaped pipelines built from configs.

Weights are random with fixed seeds; the folders are ordinary diffusers pipelines (saved with
`save_pretrained`), so every command takes them exactly like a real checkpoint folder. They are
built once and cached under `cache_dir()` (see `clif_serve.paths`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from clif_serve.models.vocab import build_clip_tokenizer
from clif_serve.paths import cached_model_folder

# Bump when the recipe below changes, so stale caches are rebuilt instead of reused.
TINY_RECIPE_VERSION = "2"
EMBEDDED_MODELS = ("tiny", "tiny-xl")


# The two-level UNet layout both tiny models share (64x64 images through a 2x VAE).
_UNET_LAYOUT = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
)


def _text_config(tokenizer, num_hidden_layers: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=num_hidden_layers,
        max_position_embeddings=77,
        projection_dim=32,
        layer_norm_eps=1e-5,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _tiny_vae() -> AutoencoderKL:
    torch.manual_seed(2)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=64,
    )


def build_tiny_sd15() -> StableDiffusionPipeline:
    """SD1.5-shaped: one CLIP text encoder, a two-level UNet, a tiny VAE, DDIM, 64x64 images."""
    tokenizer = build_clip_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        **_UNET_LAYOUT,
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    torch.manual_seed(1)
    text_encoder = CLIPTextModel(_text_config(tokenizer, num_hidden_layers=2))
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=_tiny_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_sdxl() -> StableDiffusionXLPipeline:
    """SDXL-shaped: two text encoders (the second with projection), pooled embeddings, time ids."""
    tokenizer = build_clip_tokenizer()
    tokenizer_2 = build_clip_tokenizer(pad_token="!")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        **_UNET_LAYOUT,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64,
    )
    torch.manual_seed(1)
    text_encoder = CLIPTextModel(_text_config(tokenizer, num_hidden_layers=3))
    torch.manual_seed(3)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, num_hidden_layers=3))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
    )
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


_BUILDERS = {"tiny": build_tiny_sd15, "tiny-xl": build_tiny_sdxl}


def embedded_model_dir(name: str) -> Path:
    """Return the cached folder of an embedded model, building it on first use (atomically)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown embedded model {name!r}; choose one of {', '.join(EMBEDDED_MODELS)}")
    return cached_model_folder(
        f"{name}-v{TINY_RECIPE_VERSION}", "model_index.json", lambda staging: _BUILDERS[name]().save_pretrained(staging)
    )
