"""The generated-image confusion score on hand-made judge outputs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from clif_serve.evaluation.judge import JudgedObject
from clif_serve.evaluation.leakage import ImageVerdict, distinctive_attributes, judge_image, score_images
from clif_serve.evaluation.world import Toy

ANN = Toy("circle", "yellow", "dotted", "triangle", "purple")
BOB = Toy("circle", "yellow", "plain", "triangle", "red")


def seen(toy: Toy, **changes) -> JudgedObject:
    values = {name: toy.value(name) for name in ("body_shape", "body_colour", "texture", "head_shape", "head_colour")}
    return JudgedObject((0, 0, 1, 1), 100, (0.0, 0.0), {**values, **changes})


def test_distinctive_attributes_of_a_look_alike_pair():
    assert distinctive_attributes(ANN, BOB) == ("texture", "head_colour")


def test_both_concepts_drawn_cleanly_in_either_order():
    for objects in ([seen(ANN), seen(BOB)], [seen(BOB), seen(ANN)]):
        assert judge_image(objects, (ANN, BOB)) == ImageVerdict(objects=2, matched=2, leaked=0, missing=0, alike=10)


def test_swapped_head_colours_leak_both_objects():
    objects = [seen(ANN, head_colour="red"), seen(BOB, head_colour="purple")]
    assert judge_image(objects, (ANN, BOB)) == ImageVerdict(2, 2, leaked=2, missing=0, alike=8)


def test_the_same_concept_twice_leaks_and_misses_the_other():
    assert judge_image([seen(ANN), seen(ANN)], (ANN, BOB)) == ImageVerdict(2, 2, leaked=1, missing=1, alike=8)


def test_one_object_or_none_misses_concepts():
    assert judge_image([seen(BOB)], (ANN, BOB)) == ImageVerdict(1, 1, leaked=0, missing=1, alike=5)
    assert judge_image([], (ANN, BOB)) == ImageVerdict(0, 0, leaked=0, missing=2, alike=0)


def test_an_object_with_neither_concepts_attributes_counts_as_missing_not_leaked():
    stranger = seen(ANN, texture="striped", head_colour="blue")
    assert judge_image([seen(ANN), stranger], (ANN, BOB)) == ImageVerdict(2, 2, leaked=0, missing=1, alike=8)


def test_likeness_counts_the_shared_attributes_that_confusion_ignores():
    """The class word's usual toy with the concepts' distinctive parts: no confusion, half a likeness."""
    green = [seen(ANN, body_shape="square", body_colour="green", head_shape="square"),
             seen(BOB, body_shape="square", body_colour="green", head_shape="square")]
    verdict = judge_image(green, (ANN, BOB))
    assert (verdict.leaked, verdict.missing, verdict.alike) == (0, 0, 4)
    assert score_images([verdict]).likeness == pytest.approx(4 / 10)


def test_extra_objects_do_not_hide_a_clean_pair():
    assert judge_image([seen(ANN, texture="striped"), seen(ANN), seen(BOB)], (ANN, BOB)).leaked == 0


def test_scores_aggregate_shares():
    verdicts = [ImageVerdict(2, 2, 0, 0, 10), ImageVerdict(2, 2, 1, 1, 7), ImageVerdict(1, 1, 0, 1, 3), ImageVerdict(2, 2, 2, 0, 8)]
    score = score_images(verdicts)
    assert score.leakage == pytest.approx(3 / 7)
    assert score.missing == pytest.approx(2 / 4)
    assert score.confusion == pytest.approx(3 / 7 + 0.5)
    assert score.clean == pytest.approx(1 / 4)
    assert score.objects_per_image == pytest.approx(7 / 4)
    assert score.likeness == pytest.approx(28 / 35)
    with pytest.raises(ValueError):
        score_images([])


def test_random_attributes_are_far_from_clean():
    rng = np.random.default_rng(0)
    verdicts = []
    for _ in range(200):
        objects = [seen(ANN, texture=str(rng.choice(["plain", "striped", "dotted"])),
                        head_colour=str(rng.choice(["red", "purple", "blue"]))) for _ in range(2)]
        verdicts.append(judge_image(objects, (ANN, replace(BOB))))
    assert score_images(verdicts).clean < 0.3
