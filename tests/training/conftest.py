"""Fixtures for the training tests: small synthetic concept folders drawn with PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw


def draw_concept(folder: Path, body: tuple[int, int, int], head: tuple[int, int, int], count: int = 3, seed: int = 0,
                 size: int = 64) -> Path:
    """`count` images of a two-part object (round body, square head) on a light background."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        image = Image.new("RGB", (size, size), (225, 225, 215))
        draw = ImageDraw.Draw(image)
        x, y = (int(v) for v in rng.integers(4, size // 4, 2))
        draw.ellipse((x, y + 12, x + size // 2, y + 12 + size // 2), fill=body)
        draw.rectangle((x + 6, y, x + 22, y + 16), fill=head)
        image.save(folder / f"{index}.png")
    return folder


@pytest.fixture(scope="session")
def concept_dirs(tmp_path_factory) -> dict[str, Path]:
    """Two look-alike concepts (same body colour, different heads) and a common concept."""
    root = tmp_path_factory.mktemp("concepts")
    return {
        "ann": draw_concept(root / "ann", (200, 40, 40), (30, 30, 200), seed=1),
        "bob": draw_concept(root / "bob", (200, 40, 40), (30, 160, 30), seed=2),
        "cat": draw_concept(root / "cat", (90, 90, 90), (250, 200, 0), count=2, seed=3),
    }
