"""Regions in process (PyTorch executor): checks, the full-image identity, placement, LoRA, the CLI."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from clif_serve.concepts.registry import ConceptRegistry
from clif_serve.errors import InputError
from clif_serve.models.loading import load_base_model
from clif_serve.runtime.pipeline import ConceptPipeline
from clif_serve.runtime.regions import Region, mask_from_image, mask_to_png, pixel_masks
from clif_serve.runtime.request import GenerationRequest
from clif_serve.runtime.torch_executor import TorchExecutor
from tests.helpers import random_lora, random_pack

PROMPT = "a photo of <a> and <b> on the beach"
LEFT, RIGHT = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)


def _pipeline(base, packs) -> ConceptPipeline:
    return ConceptPipeline(TorchExecutor(base), base.tokenizers, ConceptRegistry(base.spec, packs))


@pytest.fixture(scope="module")
def tiny(tiny_base):
    return _pipeline(tiny_base, [random_pack(tiny_base, "a", seed=1), random_pack(tiny_base, "b", seed=2)])


def _request(regions=(), prompt=PROMPT, **options) -> GenerationRequest:
    values = {"steps": 2, "seed": 5, "negative_prompt": "blurry"} | options
    return GenerationRequest(prompt, regions=tuple(regions), **values)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _half_mask(value: float = 1.0, shape=(64, 64)) -> np.ndarray:
    mask = np.zeros(shape, np.float32)
    mask[:, : shape[1] // 2] = value
    return mask


BAD_REGIONS = {
    "box-outside": [Region("<a>", box=(0.0, 0.0, 1.2, 1.0))],
    "box-negative": [Region("<a>", box=(-0.1, 0.0, 0.5, 1.0))],
    "box-outside-pixels": [Region("<a>", box=(0, 0, 80, 64), pixels=True)],
    "box-empty": [Region("<a>", box=(0.5, 0.0, 0.5, 1.0))],
    "box-upside-down": [Region("<a>", box=(0.2, 0.6, 0.8, 0.4))],
    "box-three-numbers": [Region("<a>", box=(0.0, 0.0, 1.0))],
    "box-not-numbers": [Region("<a>", box=("0", 0, 1, 1))],
    "box-nan": [Region("<a>", box=(0.0, 0.0, float("nan"), 1.0))],
    "mask-wrong-size": [Region("<a>", mask=_half_mask(shape=(32, 32)))],
    "mask-rgb-array": [Region("<a>", mask=np.ones((64, 64, 3), np.float32))],
    "mask-not-weights": [Region("<a>", mask=_half_mask(2.0))],
    "mask-text": [Region("<a>", mask=np.full((64, 64), "x"))],
    "mask-empty": [Region("<a>", mask=np.zeros((64, 64), np.float32))],
    "box-and-mask": [Region("<a>", box=LEFT, mask=_half_mask())],
    "neither": [Region("<a>")],
    "empty-prompt": [Region("  ", box=LEFT)],
    "unknown-concept": [Region("<nobody>", box=LEFT)],
    "unknown-concept-second": [Region("<a>", box=LEFT), Region("<nobody> here", box=RIGHT)],
    "prompt-too-long": [Region("a photo " * 40, box=LEFT)],
    "overlapping-boxes": [Region("<a>", box=(0.0, 0.0, 0.6, 1.0)), Region("<b>", box=(0.4, 0.0, 1.0, 1.0))],
    "overlapping-masks": [Region("<a>", mask=_half_mask(0.7)), Region("<b>", mask=np.full((64, 64), 0.5, np.float32))],
    "too-many": [Region("<a>", box=(i / 9, 0.0, (i + 1) / 9, 1.0)) for i in range(9)],
    "not-a-region": ["<a>=0,0,1,1"],
}


@pytest.mark.parametrize("label", BAD_REGIONS)
def test_bad_regions_are_refused_naming_regions(tiny, label):
    with pytest.raises(InputError) as refused:
        tiny.generate(_request(BAD_REGIONS[label]))
    assert refused.value.field == "regions", refused.value


def test_refusals_say_which_region_and_why(tiny):
    cases = {
        "unknown-concept-second": "region 1: unknown concept <nobody>",
        "prompt-too-long": r"region 0: is \d+ tokens long",
        "overlapping-boxes": "regions 0 and 1 overlap",
        "too-many": "9 regions; this deployment takes at most 8",
        "mask-wrong-size": "the mask is [32, 32], the image is [64, 64]",
        "box-outside": "is outside the 64x64 image",
        "box-empty": "is empty",
    }
    for label, text in cases.items():
        with pytest.raises(InputError, match=text.replace("[", "\\[").replace("]", "\\]")):
            tiny.generate(_request(BAD_REGIONS[label]))


def test_a_mask_image_must_be_one_channel_and_readable():
    with pytest.raises(InputError, match="regions: a region mask must be a one-channel image .* mode RGB"):
        Region.from_image("<a>", _png(np.zeros((64, 64, 3), np.uint8)))
    with pytest.raises(InputError, match="regions: a region mask is not a readable image"):
        Region.from_image("<a>", b"not a png")
    mask = _half_mask()
    assert np.array_equal(mask_from_image(mask_to_png(mask)), mask)
    binary = Region.from_image("<a>", _png(mask > 0))
    assert np.array_equal(binary.mask, mask)


def test_touching_boxes_and_feathered_masks_do_not_overlap():
    masks = pixel_masks([Region("<a>", box=LEFT), Region("<b>", box=RIGHT)], 64, 64, 4)
    assert masks.shape == (2, 64, 64) and masks.sum(axis=0).max() == pytest.approx(1.0)
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    pixel_masks([Region("<a>", mask=ramp), Region("<b>", mask=1 - ramp)], 64, 64, 4)
    # A box edge inside a pixel covers it by the share of its area.
    third = pixel_masks([Region("<a>", box=(0, 0, 10.5, 64), pixels=True)], 64, 64, 4)[0]
    assert third[0, 9] == 1 and third[0, 10] == 0.5 and third[0, 11] == 0


@pytest.mark.parametrize("guidance", [7.5, 1.0], ids=["guidance", "no-guidance"])
def test_one_region_over_the_whole_image_with_the_global_prompt_is_the_plain_request(tiny, guidance):
    plain = tiny.generate(_request(guidance_scale=guidance))
    whole = tiny.generate(_request([Region(PROMPT, box=(0, 0, 1, 1))], guidance_scale=guidance))
    assert torch.equal(plain, whole)
    assert not torch.equal(plain, tiny.generate(_request([Region("<a>", box=(0, 0, 1, 1))], guidance_scale=guidance)))


def test_sdxl_full_image_region_is_the_plain_request_and_regions_count(tiny_xl_base):
    pipeline = _pipeline(tiny_xl_base, [random_pack(tiny_xl_base, "a", seed=1), random_pack(tiny_xl_base, "b", seed=2)])
    plain = pipeline.generate(_request(negative_prompt=None))
    whole = pipeline.generate(_request([Region(PROMPT, box=(0, 0, 1, 1))], negative_prompt=None))
    # SDXL's absent negative prompt is zeros, not encoded: the text encoder sees the prompt alone in the
    # plain request and next to the region prompt here, which may move the last float bits only.
    assert (plain - whole).abs().max() < 1e-5
    regional = pipeline.generate(_request([Region("<a>", box=LEFT), Region("<b>", box=RIGHT)], negative_prompt="dark"))
    assert regional.shape == (1, 3, 64, 64) and (regional - plain).abs().max() > 1e-2


def test_pixel_boxes_and_masks_place_regions_like_fraction_boxes(tiny):
    fractions = tiny.generate(_request([Region("<a>", box=LEFT), Region("<b>", box=RIGHT)], num_images=2))
    pixels_and_mask = tiny.generate(
        _request([Region("<a>", mask=_half_mask()), Region("<b>", box=(32, 0, 64, 64), pixels=True)], num_images=2)
    )
    assert fractions.shape == (2, 3, 64, 64) and torch.equal(fractions, pixels_and_mask)
    assert (fractions[0] - fractions[1]).abs().max() > 1e-2  # two images, one set of regions
    swapped = tiny.generate(_request([Region("<b>", box=LEFT), Region("<a>", box=RIGHT)]))
    assert (swapped[0] - fractions[0]).abs().max() > 1e-2


def test_a_region_acts_mostly_inside_its_box(tiny):
    """The change a left-half region makes is larger in the left half than in the right one."""
    plain = tiny.generate(_request(prompt="a photo", steps=4))
    left = tiny.generate(_request([Region("a photo of <a>", box=LEFT)], prompt="a photo", steps=4))
    change = (left - plain).abs().mean(dim=(0, 1))
    assert change[:, :32].mean() > 1.2 * change[:, 32:].mean()


def test_region_concepts_bring_their_lora_and_must_share_one_set():
    base = load_base_model("tiny")  # private: the executor adds peft adapters to its UNet
    lora_pack = replace(random_pack(base, "c", seed=3), lora=random_lora(base, seed=3))
    other = replace(random_pack(base, "d", seed=4), lora=random_lora(base, seed=4))
    pipeline = _pipeline(base, [random_pack(base, "a", seed=1), lora_pack, other])
    regions = [Region("<a>", box=LEFT), Region("<c> in red", box=RIGHT)]
    with_lora = pipeline.generate(_request(regions, prompt="<a> and a friend"))
    pipeline.registry = ConceptRegistry(base.spec, [random_pack(base, "a", seed=1), replace(lora_pack, lora=None)])
    without = pipeline.generate(_request(regions, prompt="<a> and a friend"))
    assert (with_lora - without).abs().max() > 1e-2
    pipeline.registry = ConceptRegistry(base.spec, [lora_pack, other])
    with pytest.raises(InputError, match="regions: concepts c, d carry different LoRA sets"):
        pipeline.generate(_request([Region("<d>", box=RIGHT)], prompt="<c> and a friend"))


def test_cli_region_option(tmp_path, capsys):
    from clif_serve.cli import main
    from clif_serve.cli.common import parse_region

    assert parse_region("<a> in red = 0,0,0.5,1") == Region("<a> in red", (0.0, 0.0, 0.5, 1.0))
    assert parse_region("x=0,0,32,64px") == Region("x", (0.0, 0.0, 32.0, 64.0), pixels=True)
    (tmp_path / "mask.png").write_bytes(_png((_half_mask() * 255).astype(np.uint8)))
    assert np.array_equal(parse_region(f"x=@{tmp_path / 'mask.png'}").mask, _half_mask())
    out = tmp_path / "out.png"
    common = ["generate", "a photo", "--steps", "2", "-o", str(out)]
    assert main([*common, "--region", "a red ball=0,0,0.5,1", "--region", "a blue cube=0.5,0,1,1"]) == 0
    assert np.asarray(Image.open(out)).shape == (64, 64, 3)
    assert main([*common, "--region", "a red ball=0,0,0.7,1", "--region", "a blue cube=0.5,0,1,1"]) == 2
    assert "regions: regions 0 and 1 overlap" in capsys.readouterr().err
    assert main([*common, "--region", "no box here"]) == 2
    assert "regions: --region 'no box here': expected SUB-PROMPT=x0,y0,x1,y1" in capsys.readouterr().err
