"""Stage-1 (image, caption) pairs: global, region, G-Aug, R-Aug and M-Aug samples.

* global: a whole concept image, "a photo of <joe>";
* region: a crop of one over-segmented region, "a part of <joe>" — the regions of the *other*
  concepts in the same batch are what pushes `<joe>` away from them;
* G-Aug: the concept image beside a common-concept image, "<joe> on the left and a cat on the right"
  (and mirrored);
* R-Aug: a region beside a common-concept image, "a part of <joe> on the left and a cat on the right";
* M-Aug: two customised concepts side by side, "<joe> on the left and <rex> on the right".

The CLIF paper captions regions with their part names ("the hat of <joe>") found by a captioner;
with no captioner here every region is "a part of <concept>" (docs/training.md). Composites are
square canvases (two square tiles, centred vertically), so CLIP's centre crop keeps both halves.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from PIL import Image

from clif_serve.training.data import ConceptImages

GLOBAL_TEMPLATES = ("a photo of {}", "a rendering of {}", "a close-up photo of {}", "a good photo of {}")
REGION_TEMPLATES = ("a part of {}", "a photo of a part of {}", "a crop of {}")
PAIR_TEMPLATE = "{} on the left and {} on the right"
TILE = 112
FILL = (122, 116, 104)


@dataclass(frozen=True)
class ContrastSample:
    """One stage-1 pair. Samples with the same `group` say the same thing (positives of each other)."""

    image: Image.Image
    caption: str
    group: str
    kind: str


@dataclass(frozen=True)
class CommonImages:
    """A common concept: its caption word and images."""

    word: str
    images: list[Image.Image]


def side_by_side(left: Image.Image, right: Image.Image, tile: int = TILE) -> Image.Image:
    """A square canvas `2*tile` wide with the two images as square tiles, centred vertically."""
    canvas = Image.new("RGB", (2 * tile, 2 * tile), FILL)
    canvas.paste(left.convert("RGB").resize((tile, tile), Image.BICUBIC), (0, tile // 2))
    canvas.paste(right.convert("RGB").resize((tile, tile), Image.BICUBIC), (tile, tile // 2))
    return canvas


def _pick(rng: np.random.Generator, items: list, count: int) -> list:
    order = rng.permutation(len(items))[: min(count, len(items))]
    return [items[i] for i in order]


def build_samples(
    concepts: list[ConceptImages], commons: list[CommonImages], seed: int, aug_per_concept: int = 8
) -> list[ContrastSample]:
    """Every stage-1 sample of a concept set; augmentations are drawn with `seed` (deterministic)."""
    rng = np.random.default_rng(seed)
    samples: list[ContrastSample] = []

    def template(options: tuple[str, ...]) -> str:
        return options[int(rng.integers(len(options)))]

    common_images = [(common.word, image) for common in commons for image in common.images]
    for concept in concepts:
        trigger, name = concept.trigger, concept.name
        regions = [crop for crops in concept.regions for crop in crops]
        for image in concept.images:
            samples.append(ContrastSample(image, template(GLOBAL_TEMPLATES).format(trigger), f"global:{name}", "global"))
        for crop in regions:
            samples.append(ContrastSample(crop, template(REGION_TEMPLATES).format(trigger), f"region:{name}", "region"))
        for kind, sources, phrase in (("g_aug", concept.images, trigger), ("r_aug", regions, f"a part of {trigger}")):
            pairs = list(itertools.product(range(len(sources)), range(len(common_images))))
            for index, (source, other) in enumerate(_pick(rng, pairs, aug_per_concept)):
                word, common = common_images[other]
                if index % 2 == 0:
                    image, caption = side_by_side(sources[source], common), PAIR_TEMPLATE.format(phrase, f"a {word}")
                    group = f"{kind}:{name}|{word}"
                else:
                    image, caption = side_by_side(common, sources[source]), PAIR_TEMPLATE.format(f"a {word}", phrase)
                    group = f"{kind}:{word}|{name}"
                samples.append(ContrastSample(image, caption, group, kind))
    for first, second in itertools.permutations(concepts, 2):
        pairs = list(itertools.product(range(len(first.images)), range(len(second.images))))
        for left, right in _pick(rng, pairs, aug_per_concept // 2):
            image = side_by_side(first.images[left], second.images[right])
            caption = PAIR_TEMPLATE.format(first.trigger, second.trigger)
            samples.append(ContrastSample(image, caption, f"m_aug:{first.name}|{second.name}", "m_aug"))
    return samples
