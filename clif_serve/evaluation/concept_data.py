"""Concept data from the world: training folders (images + part masks), common concepts, held-out regions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from clif_serve.evaluation.world import (
    Scene,
    Toy,
    random_toy,
    region_image,
    render_pair,
    render_scattered,
    render_single,
)
from clif_serve.training.config import CommonSource

PARTS_OF_TOY = ("body", "head")
# How a concept's training photos frame the toy: "close" (body 26-34 px, as a one-toy caption is drawn)
# or "varied" (body 16-34 px anywhere: close-ups and the smaller size a toy has beside another).
FRAMINGS = ("close", "varied")
VARIED_SIZES = (16, 35)


def concept_photo(toy: Toy, rng: np.random.Generator, framing: str) -> Scene:
    """One training photo of a concept's toy, framed as `framing` says (see FRAMINGS)."""
    if framing == "close":
        return render_single(toy, rng)
    if framing == "varied":
        return render_scattered([toy], rng, VARIED_SIZES)
    raise ValueError(f"framing must be one of {', '.join(FRAMINGS)}, got {framing!r}")


def write_concept_folder(folder: Path, toy: Toy, rng: np.random.Generator, shots: int, framing: str = "close") -> Path:
    """`shots` photos of one toy, with its part masks in `masks/<i>_body.png` and `masks/<i>_head.png`.

    The masks stand in for the SAM masks of the CLIF paper (`--segmentation masks`). "varied"
    framing was tried as the cause of TI's packs drawing two concepts as one toy; it was not
    (`benchmarks/results/confusion_varied_shots.md`), so close-ups stay the default.
    """
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    for index in range(shots):
        scene = concept_photo(toy, rng, framing)
        scene.image.save(folder / f"{index}.png")
        for part in PARTS_OF_TOY:
            Image.fromarray(scene.mask(0, part).astype(np.uint8) * 255).save(folder / "masks" / f"{index}_{part}.png")
    return folder


def write_common_folders(root: Path, rng: np.random.Generator, count: int = 2, images: int = 3) -> tuple[CommonSource, ...]:
    """Random toys as common concepts for G-Aug/R-Aug, captioned by their description."""
    commons = []
    for index in range(count):
        toy = random_toy(rng)
        folder = root / f"common{index}"
        folder.mkdir(parents=True, exist_ok=True)
        for shot in range(images):
            render_single(toy, rng).image.save(folder / f"{shot}.png")
        commons.append(CommonSource(toy.caption().removeprefix("a "), folder))
    return tuple(commons)


def held_out_regions(pair: tuple[Toy, Toy], rng: np.random.Generator, count: int) -> tuple[list[Image.Image], list[int]]:
    """Part regions of fresh renders labelled 0/1: each concept alone and both side by side, `count` times."""
    regions, labels = [], []
    for _ in range(count):
        for label, toy in enumerate(pair):
            scene = render_single(toy, rng)
            for part in PARTS_OF_TOY:
                regions.append(region_image(scene, 0, part))
                labels.append(label)
        order = [0, 1] if rng.random() < 0.5 else [1, 0]
        scene = render_pair(pair[order[0]], pair[order[1]], rng)
        for slot, label in enumerate(order):
            for part in PARTS_OF_TOY:
                if scene.mask(slot, part).any():
                    regions.append(region_image(scene, slot, part))
                    labels.append(label)
    return regions, labels
