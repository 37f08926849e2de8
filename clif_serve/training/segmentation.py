"""Over-segmentation of concept images into regions: SLIC, Felzenszwalb, user masks or SAM.

A region is a boolean mask. Regions smaller than `min_area` or larger than `max_area` (fractions of
the image) are dropped, and at most `max_regions` of the largest are kept per image. The reference
code uses SAM; scikit-image's superpixels are the built-in default here (no weights needed), SAM is
an optional extra (`segment-anything` plus a checkpoint file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from clif_serve.errors import InputError

METHODS = ("slic", "felzenszwalb", "masks", "sam")
MASKS_FOLDER = "masks"


@dataclass(frozen=True)
class SegmentationConfig:
    """How concept images are cut into regions."""

    method: str = "slic"
    min_area: float = 0.02
    max_area: float = 0.6
    max_regions: int = 8
    slic_segments: int = 12
    slic_compactness: float = 10.0
    felzenszwalb_scale: float = 200.0
    felzenszwalb_min_size: int = 50
    sam_checkpoint: Path | None = None
    sam_model_type: str = "vit_b"

    def validate(self) -> None:
        """Check the method and the filters; raise InputError naming the option."""
        if self.method not in METHODS:
            raise InputError("segmentation", f"{self.method!r} is not one of {', '.join(METHODS)}")
        if not 0 <= self.min_area < self.max_area <= 1:
            raise InputError("region_area", f"need 0 <= min ({self.min_area}) < max ({self.max_area}) <= 1")
        if self.max_regions < 1:
            raise InputError("max_regions", f"must be >= 1, got {self.max_regions}")
        if self.method == "sam" and (self.sam_checkpoint is None or not Path(self.sam_checkpoint).is_file()):
            raise InputError("sam_checkpoint", "SAM segmentation needs --sam-checkpoint pointing at a weights file")


def label_map(image: np.ndarray, config: SegmentationConfig) -> np.ndarray:
    """Superpixel labels `[H, W]` (int) of an RGB uint8 image with SLIC or Felzenszwalb."""
    from skimage.segmentation import felzenszwalb, slic

    if config.method == "slic":
        return slic(image, n_segments=config.slic_segments, compactness=config.slic_compactness, start_label=0)
    return felzenszwalb(image, scale=config.felzenszwalb_scale, min_size=config.felzenszwalb_min_size)


def masks_from_labels(labels: np.ndarray) -> list[np.ndarray]:
    """One boolean mask per label value."""
    return [labels == value for value in np.unique(labels)]


def read_user_masks(image_path: Path) -> list[np.ndarray]:
    """Masks for `photos/a.png` are `photos/masks/a*.png` (non-zero pixels belong to the region)."""
    folder = image_path.parent / MASKS_FOLDER
    files = sorted(folder.glob(f"{image_path.stem}*.png"))
    if not files:
        raise InputError("segmentation", f"no masks for {image_path.name}: expected {folder}/{image_path.stem}*.png")
    return [np.asarray(Image.open(file).convert("L")) > 0 for file in files]


def sam_masks(image: np.ndarray, config: SegmentationConfig) -> list[np.ndarray]:
    """Automatic SAM masks (optional extra: `pip install segment-anything`, plus its checkpoint)."""
    try:
        from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
    except ImportError as exc:
        raise InputError(
            "segmentation", f"SAM needs the optional package 'segment-anything' ({exc}); use slic or felzenszwalb"
        ) from exc
    model = sam_model_registry[config.sam_model_type](checkpoint=str(config.sam_checkpoint))
    return [entry["segmentation"] for entry in SamAutomaticMaskGenerator(model).generate(image)]


def filter_regions(masks: list[np.ndarray], config: SegmentationConfig) -> list[np.ndarray]:
    """Drop regions outside the area range, keep the `max_regions` largest (largest first)."""
    kept = []
    for mask in masks:
        area = float(mask.mean())
        if config.min_area <= area <= config.max_area:
            kept.append((area, mask))
    kept.sort(key=lambda item: -item[0])
    return [mask for _, mask in kept[: config.max_regions]]


def segment(image: Image.Image, path: Path, config: SegmentationConfig) -> list[np.ndarray]:
    """The filtered regions of one concept image."""
    pixels = np.asarray(image.convert("RGB"))
    if config.method == "masks":
        masks = read_user_masks(path)
        for mask in masks:
            if mask.shape != pixels.shape[:2]:
                raise InputError("segmentation", f"a mask of {path.name} is {mask.shape}, the image {pixels.shape[:2]}")
    elif config.method == "sam":
        masks = sam_masks(pixels, config)
    else:
        masks = masks_from_labels(label_map(pixels, config))
    return filter_regions(masks, config)


def region_crop(image: Image.Image, mask: np.ndarray, fill: tuple[int, int, int] = (122, 116, 104)) -> Image.Image:
    """The region's bounding box, pixels outside the region painted `fill` (CLIP's mean colour)."""
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    pixels = np.asarray(image.convert("RGB"))[top:bottom, left:right].copy()
    pixels[~mask[top:bottom, left:right]] = fill
    return Image.fromarray(pixels)
