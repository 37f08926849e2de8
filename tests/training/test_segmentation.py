"""Over-segmentation: built-in superpixels with filters and caps, user masks, region crops."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from clif_serve.errors import InputError
from clif_serve.training.data import load_concept
from clif_serve.training.segmentation import SegmentationConfig, region_crop, segment
from clif_serve.training.views import make_views


@pytest.mark.parametrize("method", ["slic", "felzenszwalb"])
def test_builtin_methods_respect_area_filters_and_cap(concept_dirs, method):
    path = concept_dirs["ann"] / "0.png"
    image = Image.open(path)
    config = SegmentationConfig(method=method, min_area=0.03, max_area=0.5, max_regions=3)
    masks = segment(image, path, config)
    assert 1 <= len(masks) <= 3
    areas = [mask.mean() for mask in masks]
    assert all(0.03 <= area <= 0.5 for area in areas)
    assert areas == sorted(areas, reverse=True)
    uncapped = segment(image, path, replace(config, max_regions=100))
    assert len(uncapped) > len(masks) and all(np.array_equal(a, b) for a, b in zip(masks, uncapped, strict=False))


def test_user_masks_and_region_crop(tmp_path):
    image = Image.new("RGB", (64, 64), (255, 255, 255))
    image.paste((255, 0, 0), (10, 20, 30, 40))
    image.save(tmp_path / "x.png")
    (tmp_path / "masks").mkdir()
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "masks" / "x_0.png")
    concept = load_concept("x", tmp_path, 64, SegmentationConfig(method="masks"))
    assert len(concept.masks[0]) == 1 and concept.masks[0][0].sum() == 400
    crop = concept.regions[0][0]
    assert crop.size == (20, 20) and crop.getpixel((5, 5)) == (255, 0, 0)
    # Outside the region inside its box is painted with the fill colour.
    ring = np.zeros((64, 64), bool)
    ring[20:40, 10:30] = True
    ring[25:35, 15:25] = False
    assert region_crop(image, ring).getpixel((10, 10)) == (122, 116, 104)


def test_masks_of_wrong_size_are_refused(tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "y.png")
    (tmp_path / "masks").mkdir()
    Image.new("L", (32, 32), 255).save(tmp_path / "masks" / "y.png")
    with pytest.raises(InputError, match="is \\(32, 32\\)"):
        load_concept("y", tmp_path, 64, SegmentationConfig(method="masks"))


def test_views_swap_background_and_keep_the_size(concept_dirs):
    path = concept_dirs["ann"] / "0.png"
    image = Image.open(path).convert("RGB")
    masks = segment(image, path, SegmentationConfig())
    background = Image.new("RGB", image.size, (0, 0, 0))
    views = make_views(image, masks, [background], np.random.default_rng(0), 8)
    assert len(views) == 8 and all(v.size == image.size for v in views)
    assert any(not np.array_equal(np.asarray(v), np.asarray(image)) for v in views)
