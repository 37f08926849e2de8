"""The frozen CLIP image side of stage 1: vision tower, visual projection, text projection, logit scale.

A local CLIP folder in transformers' `CLIPModel` layout is read with `--image-encoder PATH`; the
embedded default is a tiny CLIP built from a config with a fixed seed and cached under
`cache_dir()`, so training runs with no download. Only the vision tower is instantiated; the text
projection and logit scale are read from the folder's weight file (the text tower is not needed:
the base model's own text encoder produces the text side). Images are preprocessed here with
PIL/torch (resize the short side, centre crop, CLIP mean/std) because transformers 5's
`CLIPImageProcessor` wants torchvision.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPVisionModelWithProjection
from transformers.utils import logging as transformers_logging

from clif_serve.errors import InputError
from clif_serve.paths import cached_model_folder
from clif_serve.training.data import center_square

TINY_CLIP_RECIPE_VERSION = "1"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def tiny_clip_config(
    vocab_size: int = 1024, text_hidden: int = 32, projection_dim: int = 32, image_size: int = 32, patch_size: int = 4
) -> CLIPConfig:
    """A tiny CLIP: text tower shaped like the tiny base models' encoder, a two-layer ViT (32x32, patch 4)."""
    text = dict(
        vocab_size=vocab_size, hidden_size=text_hidden, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=projection_dim,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )
    vision = dict(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        image_size=image_size, patch_size=patch_size, projection_dim=projection_dim,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def normalised_pixels(
    images: list[Image.Image], size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """Resize the short side (bicubic), centre crop to `size`, normalise with mean/std: `[N, 3, S, S]`."""
    batch = [np.asarray(center_square(image, size), dtype=np.float32) / 255.0 for image in images]
    pixels = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
    return (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def _build_tiny_clip(folder: Path) -> None:
    torch.manual_seed(4)
    CLIPModel(tiny_clip_config()).save_pretrained(folder)


def embedded_clip_dir() -> Path:
    """The cached tiny CLIP folder, built on first use (seed 4)."""
    return cached_model_folder(f"tiny-clip-v{TINY_CLIP_RECIPE_VERSION}", "config.json", _build_tiny_clip)


def _read_tensors(folder: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            found.update({key: handle.get_tensor(key) for key in names if key in handle.keys()})
    missing = [name for name in names if name not in found]
    if missing:
        raise InputError("image_encoder", f"{folder}: no {', '.join(missing)} in its *.safetensors (CLIPModel layout)")
    return found


class ImageTower(nn.Module):
    """Frozen CLIP image side: `embed(images)` -> `[N, D]`; `text_projection` maps pooled text to D."""

    def __init__(self, vision: CLIPVisionModelWithProjection, text_projection: nn.Linear, logit_scale: float,
                 mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD, source: str = ""):
        super().__init__()
        self.vision = vision
        self.text_projection = text_projection
        self.logit_scale = logit_scale
        self.mean, self.std = mean, std
        self.source = source
        self.requires_grad_(False).eval()

    @property
    def image_size(self) -> int:
        return int(self.vision.config.image_size)

    @property
    def projection_dim(self) -> int:
        return int(self.vision.config.projection_dim)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """Resize the short side (bicubic), centre crop, normalise: `[N, 3, S, S]` float32."""
        return normalised_pixels(images, self.image_size, self.mean, self.std)

    @torch.no_grad()
    def embed(self, images: list[Image.Image], batch_size: int = 64) -> torch.Tensor:
        """Image features (not normalised) `[N, D]` in float32 on the tower's device."""
        device, dtype = self.vision.device, self.vision.dtype
        features = [
            self.vision(pixel_values=self.preprocess(images[i : i + batch_size]).to(device, dtype)).image_embeds
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(features).float()


def load_image_tower(path: str | Path | None, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> ImageTower:
    """Load a CLIP folder (CLIPModel layout), or the embedded tiny CLIP when `path` is None."""
    folder = embedded_clip_dir() if path is None else Path(path).expanduser()
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise InputError("image_encoder", f"{folder}: not a CLIP folder (config.json is missing)")
    config = json.loads(config_file.read_text())
    if config.get("model_type") != "clip":
        raise InputError("image_encoder", f"{folder}: model_type is {config.get('model_type')!r}, expected 'clip'")
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # the unused text tower is reported as unexpected keys
    try:
        vision = CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True, dtype=dtype)
    finally:
        transformers_logging.set_verbosity(verbosity)
    tensors = _read_tensors(folder, ("text_projection.weight", "logit_scale"))
    weight = tensors["text_projection.weight"].to(dtype)
    projection = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=dtype)
    projection.weight.data.copy_(weight)
    mean, std = CLIP_MEAN, CLIP_STD
    processor_file = folder / "preprocessor_config.json"
    if processor_file.is_file():
        processor = json.loads(processor_file.read_text())
        mean, std = tuple(processor.get("image_mean", mean)), tuple(processor.get("image_std", std))
    logit_scale = float(tensors["logit_scale"].float().exp())
    return ImageTower(vision, projection, logit_scale, mean, std, str(folder)).to(device)
