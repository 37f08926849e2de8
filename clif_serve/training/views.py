"""Augmented views for the CustomContrast objective: change what is not the subject.

Crop, flip, background swap (via the over-segmentation) and mild colour jitter; the subject's
intrinsic attributes (its shape, its colours up to +-10 %) stay.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageEnhance

from clif_serve.training.data import ConceptImages
from clif_serve.training.samples import GLOBAL_TEMPLATES, CommonImages


def make_views(
    image: Image.Image, masks: Sequence[np.ndarray], backgrounds: Sequence[Image.Image], rng: np.random.Generator,
    count: int,
) -> list[Image.Image]:
    """Views that change irrelevant attributes: crop, flip, background swap, mild colour jitter.

    The background is approximated as everything outside the over-segmentation regions that do not
    touch the image border; it is replaced by a common-concept image (or a flat colour).
    """
    pixels = np.asarray(image.convert("RGB"))
    inner = [m for m in masks if not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())]
    foreground = np.any(inner, axis=0) if inner else None
    views = []
    for _ in range(count):
        view = pixels
        if foreground is not None and rng.random() < 0.5:
            if backgrounds:
                other = backgrounds[int(rng.integers(len(backgrounds)))].convert("RGB").resize(image.size)
                fill = np.asarray(other)
            else:
                fill = np.broadcast_to(rng.integers(0, 256, 3).astype(np.uint8), pixels.shape)
            view = np.where(foreground[..., None], pixels, fill)
        result = Image.fromarray(np.ascontiguousarray(view, dtype=np.uint8))
        scale = rng.uniform(0.75, 1.0)
        width, height = round(image.width * scale), round(image.height * scale)
        left, top = int(rng.integers(image.width - width + 1)), int(rng.integers(image.height - height + 1))
        result = result.crop((left, top, left + width, top + height)).resize(image.size, Image.BICUBIC)
        if rng.random() < 0.5:
            result = result.transpose(Image.FLIP_LEFT_RIGHT)
        for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            result = enhancer(result).enhance(rng.uniform(0.9, 1.1))
        views.append(result)
    return views


def build_views(
    concepts: Sequence[ConceptImages], commons: Sequence[CommonImages], count: int, seed: int
) -> tuple[list[Image.Image], list[int], list[str]]:
    """Views of every concept and common image, their class labels, and one caption per class."""
    rng = np.random.default_rng(seed)
    backgrounds = [image for common in commons for image in common.images]
    views, labels = [], []
    for label, concept in enumerate(concepts):
        for image, masks in zip(concept.images, concept.masks, strict=True):
            views += make_views(image, masks, backgrounds, rng, count)
            labels += [label] * count
    for offset, common in enumerate(commons):
        for image in common.images:
            views += make_views(image, [], (), rng, count)
            labels += [len(concepts) + offset] * count
    captions = [GLOBAL_TEMPLATES[0].format(c.trigger) for c in concepts]
    captions += [GLOBAL_TEMPLATES[0].format(f"a {common.word}") for common in commons]
    return views, labels, captions
