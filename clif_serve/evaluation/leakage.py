"""Confusion of two concepts in generated images, read from the objects the judge found.

For a concept pair (A, B) the *distinctive* attributes are those where A and B differ (for the
world's look-alike pairs: body texture and head colour). In each image the judged objects are
matched to A and B so that the number of distinctive attributes they share with their concept is
largest (every assignment of the four largest objects is tried; ties go to the larger objects).
Then, per image:

* the object matched to a concept has **leaked** when it shows any distinctive attribute of the
  *other* concept (an object drawn as A with B's head colour; or a second A matched to B);
* a concept is **missing** when no object was matched to it or its object shows none of its own
  distinctive attributes.

Over a set of images: `leakage` = leaked objects / matched objects, `missing` = images with a
missing concept / images, and `confusion = leakage + missing` (the issue's definition: attribute
leakage plus the share of images that miss a concept; 0 is perfect, 2 the worst). `clean` is the
share of images in which both concepts are present and neither object leaked. This is our
reconstruction of a Detect-and-Compare style score (MuDI) for a world with known attributes.

Confusion reads the distinctive attributes only, so it cannot tell whether the objects look like
the concepts at all (a pack that draws its class word's usual toy with the right head colour
scores well). `likeness` says that: the share of all the concepts' attributes (body shape and
colour, texture, head shape and colour) that their matched objects show; 1 is a perfect likeness.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from clif_serve.evaluation.judge import JudgedObject
from clif_serve.evaluation.world import ATTRIBUTES, Toy

MAX_OBJECTS = 4


def distinctive_attributes(first: Toy, second: Toy) -> tuple[str, ...]:
    """The attributes in which two toys differ."""
    return tuple(name for name in ATTRIBUTES if first.value(name) != second.value(name))


def agreement(obj: JudgedObject, toy: Toy, attributes: Sequence[str]) -> int:
    """How many of `attributes` the object shows with the toy's value."""
    return sum(obj.attributes.get(name) == toy.value(name) for name in attributes)


@dataclass(frozen=True)
class ImageVerdict:
    """One image: objects found, objects matched to the concepts, leaked objects, missing concepts, and
    how many of their concepts' attributes the matched objects show (`alike`)."""

    objects: int
    matched: int
    leaked: int
    missing: int
    alike: int


def judge_image(objects: Sequence[JudgedObject], concepts: tuple[Toy, Toy]) -> ImageVerdict:
    """Match the image's objects to the two concepts and count leakage and missing concepts."""
    attributes = distinctive_attributes(*concepts)
    candidates = list(objects)[:MAX_OBJECTS]  # find_objects lists the largest first
    best: tuple[int, tuple[int | None, ...]] | None = None
    slots = list(range(len(candidates))) + [None, None]
    for choice in itertools.permutations(slots, 2):
        if choice[0] is not None and choice[0] == choice[1]:
            continue
        score = sum(agreement(candidates[i], toy, attributes) for i, toy in zip(choice, concepts, strict=True) if i is not None)
        matched = sum(i is not None for i in choice)
        rank = (score, matched)
        if best is None or rank > best[0]:
            best = (rank, choice)
    assert best is not None
    choice = best[1]
    leaked = missing = alike = 0
    for index, (own, other) in zip(choice, (concepts, concepts[::-1]), strict=True):
        if index is None:
            missing += 1
            continue
        obj = candidates[index]
        missing += agreement(obj, own, attributes) == 0
        leaked += agreement(obj, other, attributes) > 0
        alike += agreement(obj, own, ATTRIBUTES)
    return ImageVerdict(len(objects), sum(i is not None for i in choice), leaked, missing, alike)


@dataclass(frozen=True)
class ConfusionScore:
    """Scores of a set of images of one concept pair (see the module docstring)."""

    images: int
    leakage: float
    missing: float
    confusion: float
    clean: float
    likeness: float
    objects_per_image: float

    def to_dict(self) -> dict:
        return asdict(self)


def score_images(verdicts: Sequence[ImageVerdict]) -> ConfusionScore:
    """Aggregate per-image verdicts (an empty list is an error)."""
    if not verdicts:
        raise ValueError("no images to score")
    matched = sum(v.matched for v in verdicts)
    leakage = sum(v.leaked for v in verdicts) / matched if matched else 0.0
    missing = sum(v.missing > 0 for v in verdicts) / len(verdicts)
    clean = sum(v.missing == 0 and v.leaked == 0 for v in verdicts) / len(verdicts)
    likeness = sum(v.alike for v in verdicts) / (matched * len(ATTRIBUTES)) if matched else 0.0
    objects = sum(v.objects for v in verdicts) / len(verdicts)
    return ConfusionScore(len(verdicts), leakage, missing, leakage + missing, clean, likeness, objects)
