"""OrtExecutor: whole-image parity with the PyTorch executor, LoRA adapters, merged LoRA, settings."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from clif_serve.concepts.registry import ConceptRegistry
from clif_serve.contract.folder import MANIFEST
from clif_serve.contract.ort_settings import OrtSettings
from clif_serve.errors import InputError, PackError
from clif_serve.models.loading import load_base_model
from clif_serve.runtime.ort_executor import OrtExecutor
from clif_serve.runtime.pipeline import ConceptPipeline
from clif_serve.runtime.request import GenerationRequest
from clif_serve.runtime.torch_executor import TorchExecutor
from tests.helpers import random_lora

STEPS = 4
# Both sides compute in float32; the tiny models agree to ~1e-6 per image (see the report).
IMAGE_TOLERANCE = 1e-4


def _request(prompt: str, seed: int = 7) -> GenerationRequest:
    return GenerationRequest(prompt, negative_prompt="blurry", steps=STEPS, guidance_scale=6.0, seed=seed)


def _pipeline(executor, tokenizers, packs) -> ConceptPipeline:
    return ConceptPipeline(executor, tokenizers, ConceptRegistry(executor.spec, packs))


@pytest.fixture(scope="module")
def ort_tiny(tiny_export, lora_packs):
    executor = OrtExecutor(tiny_export)
    return _pipeline(executor, tiny_export.tokenizers(), lora_packs.values())


@pytest.fixture(scope="module")
def torch_tiny(lora_packs):
    """A private base model: the PyTorch executor adds peft adapters to its UNet."""
    base = load_base_model("tiny")
    return _pipeline(TorchExecutor(base), base.tokenizers, lora_packs.values())


@pytest.mark.parametrize(
    "prompt", ["a red house by a lake", "a photo of <joe> on a beach", "<ann> next to <joe>"]
)
def test_tiny_image_matches_pytorch(ort_tiny, torch_tiny, prompt):
    """Without LoRA, with a concept, and with ann's LoRA (as an onnxruntime adapter)."""
    got, want = ort_tiny.generate(_request(prompt)), torch_tiny.generate(_request(prompt))
    assert got.shape == (1, 3, 64, 64)
    assert (got - want).abs().max() < IMAGE_TOLERANCE


def test_lora_changes_the_image(ort_tiny, lora_packs):
    without = _pipeline(
        ort_tiny.executor, ort_tiny.prompt_encoder.tokenizers, [replace(lora_packs["ann"], lora=None)]
    )
    assert (ort_tiny.generate(_request("<ann>")) - without.generate(_request("<ann>"))).abs().max() > 1e-2


def test_adapter_switching_a_b_a_gives_a_again_exactly(ort_tiny):
    first = ort_tiny.generate(_request("<ann> in a garden"))
    other = ort_tiny.generate(_request("<rex> in a garden"))
    plain = ort_tiny.generate(_request("<joe> in a garden"))
    again = ort_tiny.generate(_request("<ann> in a garden"))
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-2 and (first - plain).abs().max() > 1e-2


def test_evicted_adapter_is_rebuilt_identically(tiny_export, lora_packs):
    """With room for one adapter, ann's evicts rex's; rex's comes back bit-identical."""
    small = _pipeline(OrtExecutor(tiny_export, OrtSettings(adapter_capacity=1)), tiny_export.tokenizers(), lora_packs.values())
    rex, ann = lora_packs["rex"].lora.set_id, lora_packs["ann"].lora.set_id
    before = small.generate(_request("<rex>", seed=3))
    small.generate(_request("<ann>", seed=3))
    assert small.executor.cached_adapters() == [ann]
    assert torch.equal(small.generate(_request("<rex>", seed=3)), before)
    assert small.executor.cached_adapters() == [rex]


def test_an_adapter_a_request_holds_is_never_evicted(tiny_export, lora_packs):
    executor = OrtExecutor(tiny_export, OrtSettings(adapter_capacity=1))
    rex, ann = lora_packs["rex"].lora, lora_packs["ann"].lora
    held = executor.acquire_lora(rex)
    executor.acquire_lora(ann)  # over capacity while both are held
    assert sorted(executor.cached_adapters()) == sorted([rex.set_id, ann.set_id])
    executor.release_lora(ann.set_id)  # ann is not held any more: it goes, rex (held) stays
    assert executor.cached_adapters() == [rex.set_id]
    executor.release_lora(held)


def test_bad_lora_is_refused_and_changes_nothing(ort_tiny, tiny_base):
    executor = ort_tiny.executor
    loaded = executor.cached_adapters()
    good = random_lora(tiny_base, rank=2, seed=40, modules=2)
    module = good.modules[0]
    wrong = dict(good.tensors)
    wrong[f"{module}.lora_A.weight"] = torch.randn(2, 7)
    with pytest.raises(PackError, match=f"unet.{module}"):
        executor.acquire_lora(replace(good, tensors=wrong))
    unknown = {
        f"not.a.module{key[len(module) :]}": value
        for key, value in good.tensors.items()
        if key.startswith(module)
    }
    with pytest.raises(PackError, match="not.a.module"):
        executor.acquire_lora(replace(good, tensors=unknown))
    assert executor.cached_adapters() == loaded
    with pytest.raises(KeyError):
        executor.predict_noise(
            torch.zeros(1, 4, 8, 8), torch.zeros(1), torch.zeros(1, 77, 32), lora_id="0" * 16
        )


def test_io_binding_and_plain_runs_agree(tiny_export, ort_tiny):
    bound = OrtExecutor(tiny_export, OrtSettings(intra_op_threads=1, spinning="always", io_binding=True))
    options = bound.session("unet").get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    pipeline = _pipeline(bound, ort_tiny.prompt_encoder.tokenizers, ort_tiny.registry.snapshot().values())
    for prompt in ("<joe> on a beach", "<ann> on a beach"):
        assert torch.equal(pipeline.generate(_request(prompt)), ort_tiny.generate(_request(prompt)))


@pytest.fixture(scope="module")
def xl_pipelines(tiny_xl_export, xl_packs):
    base = load_base_model("tiny-xl")
    ort_pipeline = _pipeline(OrtExecutor(tiny_xl_export), tiny_xl_export.tokenizers(), xl_packs.values())
    return ort_pipeline, _pipeline(TorchExecutor(base), base.tokenizers, xl_packs.values())


def _xl_request(prompt: str) -> GenerationRequest:
    return replace(_request(prompt), negative_prompt=None)  # SDXL: zeroed negative conditioning


@pytest.mark.parametrize(
    "prompt",
    [
        "a red house by a lake",  # base UNet: unet_lora without an adapter
        "a photo of <joe>",
        "<ann> and <joe>",  # ann's LoRA: merged into the plain unet stage
        "<bob> in the snow",  # bob's LoRA: an adapter on unet_lora
    ],
)
def test_tiny_xl_image_matches_pytorch(xl_pipelines, prompt):
    ort_pipeline, torch_pipeline = xl_pipelines
    got, want = ort_pipeline.generate(_xl_request(prompt)), torch_pipeline.generate(_xl_request(prompt))
    assert (got - want).abs().max() < IMAGE_TOLERANCE


def test_tiny_xl_merged_and_adapter_switching(xl_pipelines):
    ort_pipeline = xl_pipelines[0]
    first = ort_pipeline.generate(_xl_request("<ann> on a sofa"))
    other = ort_pipeline.generate(_xl_request("<bob> on a sofa"))
    assert torch.equal(ort_pipeline.generate(_xl_request("<ann> on a sofa")), first)
    assert (first - other).abs().max() > 1e-2


def test_merged_only_export_cannot_run_other_unets(tiny_xl_export, xl_packs, tmp_path):
    """Without unet_lora, an export with a merged LoRA runs that set only, and says so."""
    folder = tmp_path / "merged-only"
    shutil.copytree(tiny_xl_export.root, folder, ignore=shutil.ignore_patterns("unet_lora"))
    manifest = json.loads((folder / MANIFEST).read_text())  # as a recipe without the 'lora' variant writes it
    manifest["deployment"]["stages"].remove("unet_lora")
    (folder / MANIFEST).write_text(json.dumps(manifest))
    executor = OrtExecutor(folder)
    pipeline = _pipeline(executor, tiny_xl_export.tokenizers(), xl_packs.values())
    assert pipeline.generate(_xl_request("<ann>")).shape == (1, 3, 64, 64)
    with pytest.raises(InputError, match="prompt: LoRA set .* cannot run here: .*no unet_lora stage"):
        pipeline.generate(_xl_request("<bob>"))
    with pytest.raises(InputError, match="prompt: this deployment's unet has LoRA set .* merged"):
        pipeline.generate(_xl_request("<joe>"))
