"""A sample grid PNG: one row per prompt (its text on the left), the generated images to its right."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SCALE = 2
LABEL_WIDTH = 330
PAD = 4


def _wrapped(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if len(candidate) > width and line:
            lines.append(line)
            line = word
        else:
            line = candidate
    return [*lines, line]


def sample_grid(rows: Sequence[tuple[str, np.ndarray]], path: str | Path, title: str | None = None) -> Path:
    """Write rows of (label, uint8 images `[K, H, W, 3]`) as one PNG; returns its path."""
    height, width = rows[0][1].shape[1:3]
    tile_h, tile_w = height * SCALE, width * SCALE
    columns = max(len(images) for _, images in rows)
    top = 24 if title else 0
    canvas = Image.new("RGB", (LABEL_WIDTH + columns * (tile_w + PAD), top + len(rows) * (tile_h + PAD)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    if title:
        draw.text((PAD, 6), title, fill="black", font=font)
    for index, (label, images) in enumerate(rows):
        y = top + index * (tile_h + PAD)
        for line_index, line in enumerate(_wrapped(label, 52)):
            draw.text((PAD, y + 4 + 12 * line_index), line, fill="black", font=font)
        for column, image in enumerate(images):
            tile = Image.fromarray(image).resize((tile_w, tile_h), Image.NEAREST)
            canvas.paste(tile, (LABEL_WIDTH + column * (tile_w + PAD), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
