"""Injection is right: our loop + concept table == diffusers after load_textual_inversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from clif_serve.concepts.registry import ConceptRegistry
from clif_serve.concepts.textual_inversion import load_into_diffusers
from clif_serve.runtime.pipeline import ConceptPipeline
from clif_serve.runtime.request import GenerationRequest
from clif_serve.runtime.torch_executor import TorchExecutor
from tests.helpers import random_pack

TOLERANCE = 1e-5
PROMPT = "a photo of <a> and <b> on the beach"


def _reference(pipeline_class, base, packs):
    reference = pipeline_class.from_pretrained(base.path, local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    for pack in packs:
        load_into_diffusers(reference, pack)
    return reference


@pytest.mark.parametrize("kind", ["tiny", "tiny-xl"])
@pytest.mark.parametrize("negative", [None, "blurry <b>"])
def test_same_image_as_diffusers_textual_inversion(kind, negative, request):
    base = request.getfixturevalue("tiny_base" if kind == "tiny" else "tiny_xl_base")
    packs = [random_pack(base, "a", seed=11), random_pack(base, "b", seed=12, num_tokens=3)]
    ours = ConceptPipeline(TorchExecutor(base), base.tokenizers, ConceptRegistry(base.spec, packs))
    pipeline_class = StableDiffusionPipeline if kind == "tiny" else StableDiffusionXLPipeline
    reference = _reference(pipeline_class, base, packs)

    images = ours.generate(
        GenerationRequest(PROMPT, negative_prompt=negative, steps=20, seed=0, guidance_scale=7.5, num_images=2)
    )
    expected = reference(
        PROMPT,
        negative_prompt=negative,
        num_inference_steps=20,
        guidance_scale=7.5,
        num_images_per_prompt=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    difference = np.abs(images.permute(0, 2, 3, 1).numpy() - expected).max()
    assert difference <= TOLERANCE, f"max abs diff {difference}"
