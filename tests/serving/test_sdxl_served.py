"""SDXL served end to end on the embedded `tiny-xl`: export, repository, a real tritonserver, hot-loaded
packs, and served multi-concept images equal to the in-process ones.

The SDXL path differs from SD1.5's in every stage: two text encoders each take their own concept
table, the second's pooled output becomes the UNet's `text_embeds`, and `time_ids` carry the image
size. The export is the session's (`tiny_xl_export`: ann's LoRA merged into `unet`), so requests
reach `unet` (ann), `unet_lora` without adapter (no LoRA) and `unet_lora` with bob's LoRA as an
onnxruntime adapter.
"""

from __future__ import annotations

import numpy as np
import pytest

from clif_serve.concepts.registry import ConceptRegistry
from clif_serve.models.loading import load_base_model
from clif_serve.runtime.factory import ort_pipeline
from clif_serve.runtime.images import to_uint8
from clif_serve.runtime.pipeline import ConceptPipeline
from clif_serve.runtime.request import GenerationRequest
from clif_serve.runtime.torch_executor import TorchExecutor
from clif_serve.serving.client import ClifClient
from clif_serve.serving.launcher import Ports, TritonServer
from clif_serve.serving.options import RepoOptions
from clif_serve.serving.repository import build_repository

UNET_STAGES = ("unet", "unet_lora")


@pytest.fixture(scope="module")
def xl_client(tiny_xl_export, tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl-served")
    repo = build_repository(tiny_xl_export.root, root / "repo", RepoOptions(pipeline_instances=1))
    server = TritonServer(repo, Ports.free_on_loopback(), concept_store=root / "store", log_file=root / "server.log")
    with server, ClifClient(server.grpc_url) as client:
        yield client


def _executions(client) -> dict[str, int]:
    return {stage: int(client.statistics(stage).get("execution_count", 0)) for stage in UNET_STAGES}


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@pytest.mark.parametrize(
    ("prompt", "stage"),
    [
        ("a photo of <joe> and <ann> on the beach", "unet"),  # ann's LoRA is merged into unet
        ("<bob> next to <joe> in a garden", "unet_lora"),  # bob's LoRA runs as an adapter
    ],
)
def test_hot_loaded_sdxl_concepts_serve_the_in_process_image(xl_client, tiny_xl_export, xl_packs, prompt, stage):
    for pack in xl_packs.values():
        xl_client.add_concept(pack, replace=True)  # hot-load: the server was started without them
    request = GenerationRequest(prompt, negative_prompt="blurry", steps=3, seed=5, height=64, width=96)
    before = _executions(xl_client)
    served = xl_client.generate(request)
    after = _executions(xl_client)
    assert served.shape == (1, 64, 96, 3)
    assert after[stage] - before[stage] == 3, f"ran on {stage}"
    in_process = ort_pipeline(tiny_xl_export.root, xl_packs.values()).generate(request)
    assert _max_diff(served, to_uint8(in_process)) == 0


def test_served_sdxl_equals_the_pytorch_pipeline_and_uses_both_concept_tables(xl_client, xl_packs):
    """Against diffusers' UNet with ann's LoRA as a peft adapter (a private base: adapters are added)."""
    for pack in xl_packs.values():
        xl_client.add_concept(pack, replace=True)
    base = load_base_model("tiny-xl")
    pytorch = ConceptPipeline(TorchExecutor(base), base.tokenizers, ConceptRegistry(base.spec, xl_packs.values()))
    request = GenerationRequest("a photo of <joe> and <ann> on the beach", negative_prompt="blurry", steps=3, seed=5)
    served = xl_client.generate(request)
    assert _max_diff(served, to_uint8(pytorch.generate(request))) <= 1
    swapped = xl_client.generate(GenerationRequest("a photo of <ann> and <joe> on the beach", negative_prompt="blurry", steps=3, seed=5))
    assert _max_diff(served, swapped) > 0, "the concepts and their places in the prompt matter"
