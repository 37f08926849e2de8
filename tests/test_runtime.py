"""The sampling loop and the PyTorch executor: requests, batching, injection, LoRA switching."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from clif_serve.concepts.registry import ConceptRegistry
from clif_serve.errors import InputError
from clif_serve.models.loading import load_base_model
from clif_serve.runtime.pipeline import ConceptPipeline
from clif_serve.runtime.request import GenerationRequest
from clif_serve.runtime.torch_executor import TorchExecutor
from tests.helpers import random_lora, random_pack


@pytest.fixture(scope="module")
def pipeline():
    base = load_base_model("tiny")
    packs = [random_pack(base, "a", seed=1), random_pack(base, "b", seed=2)]
    return ConceptPipeline(TorchExecutor(base), base.tokenizers, ConceptRegistry(base.spec, packs))


def _image(pipeline, prompt: str, **options) -> torch.Tensor:
    return pipeline.generate(GenerationRequest(prompt, steps=4, seed=options.pop("seed", 0), **options))


@pytest.mark.parametrize(
    "field,changes",
    [
        ("prompt", {"prompt": "  "}),
        ("steps", {"steps": 0}),
        ("steps", {"steps": 2.5}),
        ("guidance_scale", {"guidance_scale": -1.0}),
        ("guidance_scale", {"guidance_scale": "high"}),
        ("seed", {"seed": -3}),
        ("height", {"height": 60}),
        ("width", {"width": 4096}),
        ("num_images", {"num_images": 0}),
        ("negative_prompt", {"negative_prompt": 3}),
    ],
)
def test_bad_request_names_the_field(pipeline, field, changes):
    request = replace(GenerationRequest("a photo of <a>"), **changes)
    with pytest.raises(InputError) as error:
        pipeline.generate(request)
    assert error.value.field == field


def test_same_seed_same_image_other_seed_other_image(pipeline):
    first = _image(pipeline, "a photo of <a>")
    assert torch.equal(first, _image(pipeline, "a photo of <a>"))
    assert not torch.equal(first, _image(pipeline, "a photo of <a>", seed=1))


def test_concepts_change_the_image(pipeline):
    assert not torch.equal(_image(pipeline, "a photo of <a>"), _image(pipeline, "a photo of <b>"))


def test_images_per_prompt_and_size(pipeline):
    images = _image(pipeline, "<a> and <b>", num_images=2, height=48, width=32)
    assert images.shape == (2, 3, 48, 32)
    assert 0.0 <= images.min() and images.max() <= 1.0


def test_injection_never_resizes_tokenizer_or_embeddings(pipeline):
    base = pipeline.executor.base
    weight = base.text_encoders[0].get_input_embeddings().weight.clone()
    vocab = len(base.tokenizers[0])
    _image(pipeline, "<a> with <b>")
    assert len(base.tokenizers[0]) == vocab
    assert torch.equal(base.text_encoders[0].get_input_embeddings().weight, weight)


def test_samples_with_different_concepts_share_a_batch(pipeline):
    encoder = pipeline.prompt_encoder
    concepts = pipeline.registry.snapshot()
    together = encoder.encode(["a photo of <a>", "<b> on a beach"], concepts)
    hidden, pooled = pipeline.executor.encode_text(0, together.input_ids[0], together.concept_tables[0])
    for index, prompt in enumerate(["a photo of <a>", "<b> on a beach"]):
        alone = encoder.encode([prompt], concepts)
        hidden_alone, pooled_alone = pipeline.executor.encode_text(0, alone.input_ids[0], alone.concept_tables[0])
        torch.testing.assert_close(hidden[index], hidden_alone[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(pooled[index], pooled_alone[0], atol=1e-6, rtol=0)


def test_lora_sets_switch_per_request_and_restore_exactly():
    base = load_base_model("tiny")
    lora_a, lora_b = random_lora(base, seed=1), random_lora(base, seed=2)
    packs = [
        replace(random_pack(base, "a", seed=1), lora=lora_a),
        replace(random_pack(base, "b", seed=2), lora=lora_b),
        random_pack(base, "plain", seed=3),
    ]
    pipeline = ConceptPipeline(TorchExecutor(base), base.tokenizers, ConceptRegistry(base.spec, packs))
    plain_before = _image(pipeline, "<plain>")
    with_a = _image(pipeline, "<plain>, <a>")
    with_b = _image(pipeline, "<plain>, <b>")
    assert not torch.equal(with_a, with_b)
    assert torch.equal(_image(pipeline, "<plain>, <a>"), with_a), "A -> B -> A must give A's image again"
    assert torch.equal(_image(pipeline, "<plain>"), plain_before), "no LoRA after LoRA must give the base image"
    with pytest.raises(InputError, match="different LoRA sets"):
        _image(pipeline, "<a> and <b>")

    # A second executor on the same base shares the UNet's adapters: no clash, and its requests
    # without LoRA run the base UNet even after the first one's ran with an adapter.
    other = ConceptPipeline(TorchExecutor(base), base.tokenizers, ConceptRegistry(base.spec, packs))
    assert torch.equal(_image(other, "<plain>, <a>"), with_a)
    _image(pipeline, "<plain>, <b>")
    assert torch.equal(_image(other, "<plain>"), plain_before)
