"""Image conversion and PNG output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """`[N, 3, H, W]` floats in [0, 1] -> `[N, H, W, 3]` uint8 (diffusers' rounding)."""
    array = images.detach().to("cpu", torch.float32).permute(0, 2, 3, 1).numpy()
    return (array * 255).round().astype(np.uint8)


def output_paths(output: str | Path, count: int) -> list[Path]:
    """`out.png` for one image; `out-0.png`, `out-1.png`, ... for several."""
    target = Path(output)
    if count == 1:
        return [target]
    return [target.with_name(f"{target.stem}-{index}{target.suffix or '.png'}") for index in range(count)]


def save_pngs(images: np.ndarray, output: str | Path) -> list[Path]:
    """Write uint8 images `[N, H, W, 3]` as PNG files and return their paths."""
    paths = output_paths(output, len(images))
    for image, path in zip(images, paths, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
    return paths
