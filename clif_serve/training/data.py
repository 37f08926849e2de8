"""Reading concept and common-concept image folders, with checks that run before any training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from clif_serve.errors import InputError
from clif_serve.training.segmentation import SegmentationConfig, region_crop, segment

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class ConceptImages:
    """A concept's images and the region crops of each image (from over-segmentation)."""

    name: str
    trigger: str
    images: list[Image.Image]
    regions: list[list[Image.Image]]
    masks: list[list[np.ndarray]]


def center_square(image: Image.Image, size: int) -> Image.Image:
    """Resize the short side to `size` (bicubic) and crop the centre square, in RGB."""
    scale = size / min(image.size)
    resized = image.convert("RGB").resize(
        (max(size, round(image.width * scale)), max(size, round(image.height * scale))), Image.BICUBIC
    )
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size))


def load_folder(folder: Path, field: str, min_size: int) -> tuple[list[Path], list[Image.Image]]:
    """Every image directly in `folder` as RGB; empty, unreadable or too small images are an error."""
    if not folder.is_dir():
        raise InputError(field, f"{folder}: no such folder")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InputError(field, f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for path in paths:
        try:
            with Image.open(path) as handle:
                image = handle.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(field, f"{path.name} is not a readable image ({exc})") from exc
        if min(image.size) < min_size:
            raise InputError(field, f"{path.name} is {image.size[0]}x{image.size[1]}; images need >= {min_size} px a side")
        images.append(image)
    return paths, images


def load_concept(name: str, folder: Path, min_size: int, segmentation: SegmentationConfig) -> ConceptImages:
    """Load a concept folder and over-segment every image; an image without regions is an error."""
    field = f"concept {name}"
    paths, images = load_folder(folder, field, min_size)
    all_masks, all_regions = [], []
    for path, image in zip(paths, images, strict=True):
        masks = segment(image, path, segmentation)
        if not masks:
            raise InputError(
                field,
                f"over-segmentation ({segmentation.method}) of {path.name} left no region within the area "
                f"limits [{segmentation.min_area}, {segmentation.max_area}]",
            )
        all_masks.append(masks)
        all_regions.append([region_crop(image, mask) for mask in masks])
    return ConceptImages(name, f"<{name}>", images, all_regions, all_masks)
