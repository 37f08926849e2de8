"""The synthetic world's renders and their ground truth."""

from __future__ import annotations

import numpy as np

from clif_serve.evaluation.world import (
    COLOURS,
    PARTS,
    SIZE,
    captioned_scene,
    look_alike_pair,
    partial_caption,
    random_toy,
    render_pair,
    render_scattered,
    render_single,
)


def test_ground_truth_matches_the_painted_pixels():
    rng = np.random.default_rng(0)
    toy = random_toy(rng)
    scene = render_single(toy, rng)
    pixels = np.asarray(scene.image).astype(int)
    head = scene.mask(0, "head")
    assert head.any() and scene.mask(0, "body").any()
    assert (pixels[head] == COLOURS[toy.head_colour]).all(), "heads are plain"
    body_colours = {tuple(p) for p in pixels[scene.mask(0, "body")]}
    assert tuple(COLOURS[toy.body_colour]) in body_colours
    assert len(body_colours) == (1 if toy.texture == "plain" else 2)
    background = scene.instance == 0
    assert len({tuple(p) for p in pixels[background]}) == 1 and (scene.part[background] == PARTS.index("background")).all()


def test_pairs_sit_in_their_halves_and_never_touch():
    rng = np.random.default_rng(1)
    for _ in range(50):
        scene = render_pair(random_toy(rng), random_toy(rng), rng)
        left, right = scene.mask(0), scene.mask(1)
        assert np.nonzero(left)[1].max() < SIZE // 2 <= np.nonzero(right)[1].min()


def test_look_alike_pairs_differ_only_in_texture_and_head_colour():
    rng = np.random.default_rng(2)
    for _ in range(100):
        first, second = look_alike_pair(rng)
        assert (first.body_shape, first.body_colour, first.head_shape) == (second.body_shape, second.body_colour, second.head_shape)
        assert first.texture != second.texture and first.head_colour != second.head_colour
        assert first.body_colour not in (first.head_colour, second.head_colour)


def test_captions_say_what_is_drawn_and_renders_are_seeded():
    scene, caption = captioned_scene(np.random.default_rng(3))
    for toy in scene.toys:
        assert toy.caption() in caption
    again, same_caption = captioned_scene(np.random.default_rng(3))
    assert same_caption == caption and np.array_equal(np.asarray(again.image), np.asarray(scene.image))
    # No partial captions: the complete ones come from the same draws as before partial captions existed.
    assert captioned_scene(np.random.default_rng(3), partial_share=0.0)[1] == caption


def test_partial_captions_name_the_body_shape_and_never_say_what_is_not_drawn():
    rng = np.random.default_rng(5)
    said = set()
    for _ in range(300):
        toy = random_toy(rng)
        caption = partial_caption(toy, rng)
        body, _, head = caption.partition(" with a ")
        assert body.split()[0] == "a" and body.split()[-1] == toy.body_shape
        assert set(body.split()[1:-1]) <= {toy.body_colour, toy.texture} - {"plain"}
        if head:
            assert head.split()[-1] == toy.head_shape and set(head.split()[:-1]) <= {toy.head_colour}
        said.add(caption == toy.caption())
    assert said == {True, False}  # sometimes complete, sometimes not
    scenes = [captioned_scene(rng, partial_share=1.0) for _ in range(50)]
    assert any(len(caption.split()) <= 4 for _, caption in scenes)  # "a photo of a circle" style captions occur


def test_scattered_toys_do_not_overlap():
    rng = np.random.default_rng(4)
    for _ in range(30):
        scene = render_scattered([random_toy(rng) for _ in range(3)], rng)
        assert sorted(np.unique(scene.instance)) == list(range(len(scene.toys) + 1))
