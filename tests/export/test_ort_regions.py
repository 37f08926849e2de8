"""Regions on the ONNX Runtime executor: parity with PyTorch (tiny and tiny-xl, with and without LoRA),
the full-image identity, and exports without region slots."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from clif_serve.concepts.registry import ConceptRegistry
from clif_serve.contract.folder import MANIFEST
from clif_serve.errors import InputError
from clif_serve.models.loading import load_base_model
from clif_serve.runtime.ort_executor import OrtExecutor
from clif_serve.runtime.pipeline import ConceptPipeline
from clif_serve.runtime.regions import Region
from clif_serve.runtime.request import GenerationRequest
from clif_serve.runtime.torch_executor import TorchExecutor

# Both sides compute in float32; as for plain requests, images agree to ~1e-6.
IMAGE_TOLERANCE = 1e-4
LEFT, RIGHT = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)


def _pipeline(executor, tokenizers, packs) -> ConceptPipeline:
    limits = getattr(executor, "deployment", None) and executor.deployment.limits  # the export's, for ORT
    return ConceptPipeline(executor, tokenizers, ConceptRegistry(executor.spec, packs), limits)


def _request(prompt: str, regions, negative: str | None = "blurry") -> GenerationRequest:
    return GenerationRequest(prompt, negative_prompt=negative, steps=3, seed=7, guidance_scale=6.0, regions=tuple(regions))


@pytest.fixture(scope="module")
def tiny_pair(tiny_export, lora_packs):
    base = load_base_model("tiny")  # private: the PyTorch executor adds peft adapters
    packs = lora_packs.values()
    return (
        _pipeline(OrtExecutor(tiny_export), tiny_export.tokenizers(), packs),
        _pipeline(TorchExecutor(base), base.tokenizers, packs),
    )


@pytest.mark.parametrize(
    "prompt,regions",
    [
        ("a photo of <joe> and a friend", [Region("<joe>", box=LEFT), Region("a red house", box=RIGHT)]),
        ("<ann> next to <joe>", [Region("<ann> in red", box=LEFT), Region("<joe>", box=(0.5, 0.25, 1.0, 0.75))]),
        ("four things", [Region(f"thing {i}", box=(i / 4, 0.0, (i + 1) / 4, 1.0)) for i in range(4)]),
    ],
    ids=["two-regions", "lora-adapter", "four-regions"],
)
def test_tiny_regional_image_matches_pytorch(tiny_pair, prompt, regions):
    ort_pipeline, torch_pipeline = tiny_pair
    got, want = ort_pipeline.generate(_request(prompt, regions)), torch_pipeline.generate(_request(prompt, regions))
    assert (got - want).abs().max() < IMAGE_TOLERANCE
    assert (got - ort_pipeline.generate(_request(prompt, ()))).abs().max() > 1e-2


def test_full_image_region_runs_on_unet_lora_and_equals_the_plain_request(tiny_pair):
    """The plain request runs on `unet`, the regional one on `unet_lora` (zero LoRA inputs): same image."""
    ort_pipeline = tiny_pair[0]
    prompt = "a photo of <joe> on the beach"
    plain = ort_pipeline.generate(_request(prompt, ()))
    assert torch.equal(plain, ort_pipeline.generate(_request(prompt, [Region(prompt, box=(0, 0, 1, 1))])))


def test_more_regions_than_the_export_has_slots_are_refused(tiny_pair):
    five = [Region(f"thing {i}", box=(i / 5, 0.0, (i + 1) / 5, 1.0)) for i in range(5)]
    with pytest.raises(InputError, match="regions: 5 regions; this deployment takes at most 4"):
        tiny_pair[0].generate(_request("five things", five))


@pytest.mark.parametrize(
    "prompt,regions",
    [
        ("<joe> and <bob>", [Region("<joe>", box=LEFT), Region("<bob> in the snow", box=RIGHT)]),  # bob: adapter
        ("<ann> and <joe>", [Region("<ann>", box=LEFT), Region("<joe>", box=RIGHT)]),  # ann: merged, here an adapter
    ],
    ids=["adapter", "merged-set"],
)
def test_tiny_xl_regional_image_matches_pytorch(tiny_xl_export, xl_packs, prompt, regions):
    base = load_base_model("tiny-xl")
    ort_pipeline = _pipeline(OrtExecutor(tiny_xl_export), tiny_xl_export.tokenizers(), xl_packs.values())
    torch_pipeline = _pipeline(TorchExecutor(base), base.tokenizers, xl_packs.values())
    request = _request(prompt, regions, negative=None)
    got = ort_pipeline.generate(request)
    assert (got - torch_pipeline.generate(request)).abs().max() < IMAGE_TOLERANCE
    assert (got - ort_pipeline.generate(replace(request, regions=()))).abs().max() > 1e-2


def test_an_export_without_region_slots_refuses_regions(tiny_export, tmp_path):
    folder = shutil.copytree(tiny_export.root, tmp_path / "no-regions", ignore=shutil.ignore_patterns("unet_lora"))
    manifest = json.loads((folder / MANIFEST).read_text())  # as a recipe without the 'lora' variant writes it
    manifest["deployment"]["stages"].remove("unet_lora")
    (folder / MANIFEST).write_text(json.dumps(manifest))
    executor = OrtExecutor(folder)
    pipeline = _pipeline(executor, tiny_export.tokenizers(), [])
    assert executor.deployment.limits.max_regions == 0
    with pytest.raises(InputError, match="regions: this deployment takes no regions"):
        pipeline.generate(_request("a photo", [Region("a cat", box=LEFT)]))
    with pytest.raises(InputError, match="regions: this deployment takes no regions"):
        executor.routing.route(None, regional=True)
