"""CLIP and DINO feature scorers for real checkpoints, from local folders the user gives.

* CLIP (`--clip DIR`, transformers' `CLIPModel` layout with its tokenizer): image features through
  the vision tower and visual projection (`training.image_tower`), text features through the
  text tower and text projection. CLIP-T = cos(image, prompt), CLIP-I = cos(image, the concept's
  photos), as in Custom Diffusion and the CLIF paper.
* DINO (`--dino DIR`, a DINOv2 folder, `Dinov2Model`): the pooled CLS feature; DINO =
  cos(image, the concept's photos), as in DreamBooth.

Nothing is downloaded (`local_files_only`); a folder that is not of the expected kind is an error
naming the option.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPTextModelWithProjection, CLIPTokenizer, Dinov2Model
from transformers.utils import logging as transformers_logging

from clif_serve.errors import InputError
from clif_serve.training.image_tower import ImageTower, load_image_tower, normalised_pixels

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _config(folder: Path, option: str, model_type: str) -> dict:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise InputError(option, f"{folder}: no config.json (expected a local {model_type} folder)")
    config = json.loads(config_file.read_text())
    if config.get("model_type") != model_type:
        raise InputError(option, f"{folder}: model_type is {config.get('model_type')!r}, expected {model_type!r}")
    return config


def _quietly(load):
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # the unused tower of a CLIPModel is reported as unexpected keys
    try:
        return load()
    finally:
        transformers_logging.set_verbosity(verbosity)


class ClipScorer:
    """Normalised CLIP image and text features from a local CLIP folder."""

    def __init__(self, folder: str | Path, device: str = "cpu"):
        folder = Path(folder).expanduser()
        _config(folder, "clip", "clip")
        has_tokenizer = (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()
        if not has_tokenizer:
            raise InputError("clip", f"{folder}: no tokenizer (tokenizer.json or vocab.json + merges.txt)")
        self.tower: ImageTower = load_image_tower(folder, device=device)
        self.text = _quietly(lambda: CLIPTextModelWithProjection.from_pretrained(folder, local_files_only=True))
        self.text = self.text.to(device).eval().requires_grad_(False)
        self.tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)

    def images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return F.normalize(self.tower.embed(list(images)), dim=-1)

    @torch.no_grad()
    def texts(self, texts: Sequence[str]) -> torch.Tensor:
        limit = min(self.tokenizer.model_max_length, self.text.config.max_position_embeddings)
        ids = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=limit, return_tensors="pt")
        return F.normalize(self.text(input_ids=ids.input_ids.to(self.text.device)).text_embeds.float(), dim=-1)


class DinoScorer:
    """Normalised DINOv2 CLS features from a local folder."""

    def __init__(self, folder: str | Path, device: str = "cpu"):
        folder = Path(folder).expanduser()
        config = _config(folder, "dino", "dinov2")
        self.model = Dinov2Model.from_pretrained(folder, local_files_only=True).to(device).eval().requires_grad_(False)
        self.size, self.mean, self.std = int(config.get("image_size", 224)), IMAGENET_MEAN, IMAGENET_STD
        processor_file = folder / "preprocessor_config.json"
        if processor_file.is_file():
            processor = json.loads(processor_file.read_text())
            crop = processor.get("crop_size", {})
            self.size = int(crop.get("height", self.size) if isinstance(crop, dict) else crop)
            self.mean = tuple(processor.get("image_mean", self.mean))
            self.std = tuple(processor.get("image_std", self.std))

    @torch.no_grad()
    def images(self, images: Sequence[Image.Image], batch_size: int = 32) -> torch.Tensor:
        features = []
        for start in range(0, len(images), batch_size):
            pixels = normalised_pixels(list(images[start : start + batch_size]), self.size, self.mean, self.std)
            features.append(self.model(pixel_values=pixels.to(self.model.device)).pooler_output.float())
        return F.normalize(torch.cat(features), dim=-1)


def mean_similarity(features: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Per row of `features`, the mean cosine to every row of `references` (both normalised)."""
    return (features @ references.T).mean(dim=1)
