"""A concept's training photos: framing, masks on disk."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clif_serve.evaluation.concept_data import VARIED_SIZES, concept_photo, write_concept_folder
from clif_serve.evaluation.world import random_toy


def _body_height(scene) -> int:
    rows = np.flatnonzero(scene.mask(0, "body").any(axis=1))
    return int(rows[-1] - rows[0] + 1)


def test_close_photos_are_close_ups_and_varied_ones_vary_in_size():
    rng = np.random.default_rng(0)
    toy = random_toy(rng)
    close = [_body_height(concept_photo(toy, rng, "close")) for _ in range(40)]
    varied = [_body_height(concept_photo(toy, rng, "varied")) for _ in range(40)]
    assert min(close) >= 20  # body boxes of 26-34 px (a triangle's or star's drawn height is a little less)
    assert min(varied) < 20 and max(varied) <= VARIED_SIZES[1]
    for scene in (concept_photo(toy, rng, "varied") for _ in range(40)):
        assert scene.toys == [toy] and scene.mask(0, "head").any()
    with pytest.raises(ValueError, match="framing must be one of close, varied"):
        concept_photo(toy, rng, "wide")


def test_a_concept_folder_holds_photos_and_their_part_masks(tmp_path):
    rng = np.random.default_rng(1)
    folder = write_concept_folder(tmp_path / "ann", random_toy(rng), rng, 3)
    for index in range(3):
        photo = np.asarray(Image.open(folder / f"{index}.png"))
        body = np.asarray(Image.open(folder / "masks" / f"{index}_body.png")) > 0
        head = np.asarray(Image.open(folder / "masks" / f"{index}_head.png")) > 0
        assert photo.shape == (64, 64, 3) and body.any() and head.any() and not (body & head).any()
