"""Public architecture configs of SD1.5 and SDXL (values from their diffusers `config.json` files).

Weights are random: latency does not depend on weight values. Nothing is downloaded.
"""

from __future__ import annotations

SD15_UNET = dict(
    act_fn="silu",
    attention_head_dim=8,
    block_out_channels=(320, 640, 1280, 1280),
    cross_attention_dim=768,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=64,
)

SDXL_UNET = dict(
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    attention_head_dim=(5, 10, 20),
    block_out_channels=(320, 640, 1280),
    cross_attention_dim=2048,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    projection_class_embeddings_input_dim=2816,
    sample_size=128,
    transformer_layers_per_block=(1, 2, 10),
    use_linear_projection=True,
)

# openai/clip-vit-large-patch14 text tower (SD1.5's text encoder, SDXL's first one).
CLIP_L_TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)

# laion CLIP-ViT-bigG-14 text tower (SDXL's text_encoder_2, with projection).
CLIP_G_TEXT = dict(
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_attention_heads=20,
    num_hidden_layers=32,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=1280,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=0,
)

# openai/clip-vit-large-patch14 vision tower: the frozen image side of CLIF training for SD1.5,
# whose text encoder is this CLIP's text tower (pooled width 768 -> projection 768).
CLIP_L_VISION = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_attention_heads=16,
    num_hidden_layers=24,
    image_size=224,
    patch_size=14,
    hidden_act="quick_gelu",
    projection_dim=768,
)

SD_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=512,
)

MODELS = {
    "sd15": dict(unet=SD15_UNET, text_encoders=(CLIP_L_TEXT,), vae=SD_VAE, resolution=512),
    "sdxl": dict(unet=SDXL_UNET, text_encoders=(CLIP_L_TEXT, CLIP_G_TEXT), vae=SD_VAE, resolution=1024),
}
