"""Full-size SD1.5 and SDXL diffusers folders: public configs, random weights, the real CLIP tokenizer.

A folder is what a user's own checkpoint looks like to clif-serve: `model_index.json`, `tokenizer/`
(+ `tokenizer_2/`), `text_encoder/` (+ `text_encoder_2/`), `unet/`, `vae/`, `scheduler/`. The
weights are random (seeded; latency and memory do not depend on their values). The tokenizers use
CLIP's real BPE vocabulary, read from `bpe_simple_vocab_16e6.txt.gz` (inside the open-clip-torch
wheel: `pip download --no-deps open-clip-torch`, unzip; the package itself is never installed),
converted to the `vocab.json` + `merges.txt` of Hugging Face's CLIP tokenizers.

The SD1.5 folder holds fp32 weights; the SDXL folder only `*.fp16.safetensors` weights (as SDXL
checkpoints are usually shipped), so its use also checks diffusers' `variant` loading. Components
are built and saved one at a time, so building SDXL needs about one fp32 UNet (10.3 GB) of memory.
Folders are built once and cached under `<clif-serve cache>/models/full-size-<kind>-v<N>`.

`clip_folder()` builds the image encoder that CLIF training on the SD1.5 folder needs: a
`CLIPModel` folder of openai/clip-vit-large-patch14's public config (the CLIP whose text tower is
SD1.5's text encoder), random weights, cached as `full-size-clip-l-v<N>`.
"""

from __future__ import annotations

import gc
import gzip
import json
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, PNDMScheduler, UNet2DConditionModel
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_size_configs import CLIP_L_TEXT, CLIP_L_VISION, MODELS  # noqa: E402

from clif_serve.paths import cached_model_folder  # noqa: E402

# Bump when a folder's recipe below changes, so a stale cached folder is rebuilt.
FOLDER_VERSION = "1"
# CLIP's BPE file holds 48 894 merges used by CLIP (after the header line): 49 408 - 256 - 256 - 2.
CLIP_MERGES = 49152 - 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# SD1.5's and SDXL's public scheduler configs (scheduler/scheduler_config.json of the checkpoints).
SCHEDULERS = {
    "sd15": lambda: PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
    ),
    "sdxl": lambda: EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        interpolation_type="linear", prediction_type="epsilon",
        steps_offset=1, timestep_spacing="leading", use_karras_sigmas=False,
    ),
}
VAE_SCALING = {"sd15": 0.18215, "sdxl": 0.13025}
PIPELINES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}
# Padding tokens of the checkpoints' tokenizers: SD1.5's and SDXL's first pad with the end token,
# SDXL's second with "!" (id 0).
PAD_TOKENS = ({"sd15": EOS, "sdxl": EOS}, {"sdxl": "!"})


def clip_vocabulary(bpe_file: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary and merges from `bpe_simple_vocab_16e6.txt.gz` (as open_clip's SimpleTokenizer builds them)."""
    lines = gzip.open(bpe_file).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : CLIP_MERGES + 1]]
    symbols = list(bytes_to_unicode().values())
    words = symbols + [symbol + "</w>" for symbol in symbols] + ["".join(merge) for merge in merges] + [BOS, EOS]
    return {word: index for index, word in enumerate(words)}, merges


def clip_tokenizer(bpe_file: Path, pad_token: str) -> CLIPTokenizer:
    """A CLIPTokenizer with CLIP's real vocabulary ("a photo of a cat" -> 49406 320 1125 539 320 2368 49407)."""
    vocab, merges = clip_vocabulary(bpe_file)
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=77)


def _save(module: torch.nn.Module, folder: Path, dtype: torch.dtype) -> None:
    """Save one component in `dtype` (fp16: as the `fp16` variant only), then free it."""
    variant = None
    if dtype == torch.float16:
        module, variant = module.to(dtype), "fp16"
    module.save_pretrained(folder, variant=variant, safe_serialization=True)
    del module
    gc.collect()


def build_folder(kind: str, out: Path, bpe_file: Path) -> None:
    """Write a full-size `kind` ('sd15' or 'sdxl') diffusers folder into `out`, one component at a time."""
    recipe = MODELS[kind]
    dtype = torch.float16 if kind == "sdxl" else torch.float32
    index = {"_class_name": PIPELINES[kind], "_diffusers_version": "0.30.0"}
    for number, values in enumerate(recipe["text_encoders"]):
        suffix = "" if number == 0 else f"_{number + 1}"
        clip_tokenizer(bpe_file, PAD_TOKENS[number][kind]).save_pretrained(out / f"tokenizer{suffix}")
        torch.manual_seed(10 + number)
        encoder_class = CLIPTextModelWithProjection if number == 1 else CLIPTextModel
        _save(encoder_class(CLIPTextConfig(**values)), out / f"text_encoder{suffix}", dtype)
        index[f"tokenizer{suffix}"] = ["transformers", "CLIPTokenizer"]
        index[f"text_encoder{suffix}"] = ["transformers", encoder_class.__name__]
    torch.manual_seed(0)
    _save(UNet2DConditionModel(**recipe["unet"]), out / "unet", dtype)
    torch.manual_seed(1)
    _save(AutoencoderKL(**recipe["vae"], scaling_factor=VAE_SCALING[kind]), out / "vae", dtype)
    scheduler = SCHEDULERS[kind]()
    scheduler.save_pretrained(out / "scheduler")
    index |= {"unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    index["scheduler"] = ["diffusers", type(scheduler).__name__]
    if kind == "sd15":
        index |= {"safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}
    else:
        index["force_zeros_for_empty_prompt"] = True
    (out / "model_index.json").write_text(json.dumps(index, indent=2))


def full_size_folder(kind: str, bpe_file: Path) -> Path:
    """The cached full-size folder of `kind`, built on first use."""
    return cached_model_folder(
        f"full-size-{kind}-v{FOLDER_VERSION}", "model_index.json", lambda staging: build_folder(kind, staging, bpe_file)
    )


def _build_clip(out: Path) -> None:
    torch.manual_seed(20)
    config = CLIPConfig(text_config=CLIP_L_TEXT, vision_config=CLIP_L_VISION, projection_dim=CLIP_L_VISION["projection_dim"])
    _save(CLIPModel(config), out, torch.float32)


def clip_folder() -> Path:
    """The cached full-size CLIP ViT-L/14 folder (CLIPModel layout) for `clif-serve train --image-encoder`."""
    return cached_model_folder(f"full-size-clip-l-v{FOLDER_VERSION}", "config.json", _build_clip)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Build (or find) a cached full-size folder and print its path.")
    parser.add_argument("kind", choices=sorted(MODELS))
    parser.add_argument("--bpe-vocab", required=True, type=Path, help="bpe_simple_vocab_16e6.txt.gz")
    arguments = parser.parse_args()
    print(full_size_folder(arguments.kind, arguments.bpe_vocab))
