"""Regions of a request: a sub-prompt each, placed by a box or a mask; their checks and masks.

A region says "draw this sub-prompt here": `Region("<joe> in a red coat", box=(0, 0, 0.5, 1))`
(x0, y0, x1, y1 as fractions of the width and height, or in pixels with `pixels=True`), or
`Region(prompt, mask=array)` with a `[height, width]` array of weights in [0, 1] (a mask image:
`Region.from_image`). Every region becomes a pixel mask of the image size (a box covers each
pixel by the share of its area inside the box), checked here; the sampling loop averages it down
to the latent grid and the UNet's cross-attention blends each region's prompt in by it
(`clif_serve.models.regional_attention`, docs/regions.md).

Overlap policy: regions may not overlap. At every pixel the regions' weights sum to at most 1
(boxes may touch, soft masks may share a feathered edge); elsewhere, and where the weights sum
to less than 1, the global prompt fills in. Every error names the request field `regions`.

No torch here: the served protocol (imported by the stage models, which do not load torch)
decodes regions with this module.
"""

from __future__ import annotations

import io
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from clif_serve.errors import InputError

REGIONS_FIELD = "regions"
# Tolerance of the overlap check (weights summing to 1 + rounding are not an overlap).
OVERLAP_TOLERANCE = 1e-4
MASK_MODES = ("1", "L", "I;16", "I", "F")


@dataclass(frozen=True)
class Region:
    """A sub-prompt and where it goes: a box `(x0, y0, x1, y1)` (fractions, or pixels with `pixels`),
    or a mask `[height, width]` of weights in [0, 1]. Masks are not compared by `==`."""

    prompt: str
    box: tuple[float, float, float, float] | None = None
    pixels: bool = False
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_image(cls, prompt: str, image: Image.Image | bytes | str | Path) -> Region:
        """A mask region from a one-channel image (a PIL image, PNG bytes or a file): white is inside."""
        return cls(prompt, mask=mask_from_image(image))


def mask_from_image(image: Image.Image | bytes | str | Path) -> np.ndarray:
    """Weights in [0, 1] `[height, width]` from a one-channel image (8-bit: value / 255)."""
    try:
        if isinstance(image, bytes):
            image = Image.open(io.BytesIO(image))
        elif not isinstance(image, Image.Image):
            image = Image.open(image)
        image.load()
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(REGIONS_FIELD, f"a region mask is not a readable image ({exc})") from exc
    if image.mode not in MASK_MODES:
        raise InputError(REGIONS_FIELD, f"a region mask must be a one-channel image (L or 1), got mode {image.mode}")
    if image.mode == "1":
        image = image.convert("L")
    array = np.asarray(image, dtype=np.float32)
    return array / 255 if image.mode == "L" else array


def mask_to_png(mask: np.ndarray) -> bytes:
    """An 8-bit one-channel PNG of weights in [0, 1] (rounded to 1/255)."""
    image = Image.fromarray(np.round(np.clip(mask, 0, 1) * 255).astype(np.uint8), mode="L")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _coverage(low: float, high: float, size: int) -> np.ndarray:
    """Share of each of `size` unit cells that lies inside [low, high]."""
    edges = np.arange(size + 1, dtype=np.float64)
    return np.clip(np.minimum(edges[1:], high) - np.maximum(edges[:-1], low), 0, 1)


def _box_mask(index: int, region: Region, height: int, width: int) -> np.ndarray:
    box = region.box
    if not isinstance(box, Sequence) or len(box) != 4:
        raise InputError(REGIONS_FIELD, f"region {index}: a box is 4 numbers x0, y0, x1, y1, got {box!r}")
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in box):
        raise InputError(REGIONS_FIELD, f"region {index}: box values must be finite numbers, got {list(box)}")
    x0, y0, x1, y1 = (float(v) for v in box)
    right, bottom = (width, height) if region.pixels else (1.0, 1.0)
    unit = "pixels" if region.pixels else "fractions"
    if not (0 <= x0 and 0 <= y0 and x1 <= right and y1 <= bottom):
        raise InputError(
            REGIONS_FIELD, f"region {index}: box {list(box)} ({unit}) is outside the {width}x{height} image"
        )
    if x1 <= x0 or y1 <= y0:
        raise InputError(REGIONS_FIELD, f"region {index}: box {list(box)} is empty (needs x0 < x1 and y0 < y1)")
    if not region.pixels:
        x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
    mask = np.outer(_coverage(y0, y1, height), _coverage(x0, x1, width)).astype(np.float32)
    if not mask.any():
        raise InputError(REGIONS_FIELD, f"region {index}: box {list(box)} covers no pixel")
    return mask


def _checked_mask(index: int, mask: object, height: int, width: int) -> np.ndarray:
    array = np.asarray(mask)
    if array.dtype.kind not in "biuf":
        raise InputError(REGIONS_FIELD, f"region {index}: a mask holds numbers, got {array.dtype}")
    if array.shape != (height, width):
        raise InputError(
            REGIONS_FIELD, f"region {index}: the mask is {list(array.shape)}, the image is [{height}, {width}] (height, width)"
        )
    array = array.astype(np.float32)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise InputError(REGIONS_FIELD, f"region {index}: not a mask (weights must lie in [0, 1])")
    if not array.any():
        raise InputError(REGIONS_FIELD, f"region {index}: the mask is empty")
    return array


def _mask_of(index: int, region: object, height: int, width: int) -> np.ndarray:
    if not isinstance(region, Region):
        raise InputError(REGIONS_FIELD, f"region {index}: must be a Region, got {type(region).__name__}")
    if not isinstance(region.prompt, str) or not region.prompt.strip():
        raise InputError(REGIONS_FIELD, f"region {index}: the prompt must be a non-empty string")
    if (region.box is None) == (region.mask is None):
        raise InputError(REGIONS_FIELD, f"region {index}: give either a box or a mask")
    if region.box is not None:
        return _box_mask(index, region, height, width)
    return _checked_mask(index, region.mask, height, width)


def pixel_masks(regions: Sequence[Region], height: int, width: int, max_regions: int) -> np.ndarray:
    """Check a request's regions and return their masks `[R, height, width]`; InputError naming `regions`.

    Checks: a list of at most `max_regions` regions, each with a non-empty prompt and either a box
    inside the image that covers some pixel, or a mask of the image size with weights in [0, 1] and
    something in it; and no two regions overlapping.
    """
    if not isinstance(regions, Sequence) or isinstance(regions, str | bytes):
        raise InputError(REGIONS_FIELD, f"must be a list of regions, got {type(regions).__name__}")
    if len(regions) > max_regions:
        if max_regions == 0:
            raise InputError(REGIONS_FIELD, "this deployment takes no regions (export with a recipe setting regions = N, and serve it without --no-regions)")
        raise InputError(REGIONS_FIELD, f"{len(regions)} regions; this deployment takes at most {max_regions}")
    masks = np.stack([_mask_of(i, r, height, width) for i, r in enumerate(regions)]) if regions else None
    if masks is None:
        return np.zeros((0, height, width), np.float32)
    total = masks.sum(axis=0)
    if total.max() > 1 + OVERLAP_TOLERANCE:
        y, x = np.unravel_index(int(total.argmax()), total.shape)
        sharing = " and ".join(str(i) for i in np.flatnonzero(masks[:, y, x]))
        raise InputError(
            REGIONS_FIELD,
            f"regions {sharing} overlap (at pixel x={x}, y={y} their weights sum to {total[y, x]:.2f}); "
            "regions may not overlap",
        )
    return masks
