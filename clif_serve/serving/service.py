"""What `clif_pipeline` does with a request: decode fields, sync concepts, run ConceptPipeline.

The pipeline is the in-process `ConceptPipeline` over a `TritonExecutor`, so served and
in-process generation share the prompt expansion, the validation and THE sampling loop. A
request keeps the registry snapshot it started with, and pins its LoRA set in the store.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from clif_serve.concepts.sync import StoreSync
from clif_serve.runtime.images import to_uint8
from clif_serve.runtime.pipeline import ConceptPipeline
from clif_serve.runtime.request import GenerationRequest
from clif_serve.serving.concept_control import resolve_store
from clif_serve.serving.context import ModelContext
from clif_serve.serving.protocol import PIPELINE_INPUTS, REGIONS_FIELD, decode_fields, decode_regions
from clif_serve.serving.triton_executor import StageCall, TritonExecutor


def decode_request(inputs: Mapping[str, np.ndarray]) -> GenerationRequest:
    """A GenerationRequest from the pipeline's input tensors (absent optional inputs keep defaults)."""
    values = decode_fields(inputs, PIPELINE_INPUTS)
    if REGIONS_FIELD in inputs:
        values[REGIONS_FIELD] = decode_regions(inputs[REGIONS_FIELD])
    return GenerationRequest(**values)


class ServedPipeline:
    """One `clif_pipeline` instance: a ConceptPipeline on stage calls, synced with the concept store."""

    def __init__(self, context: ModelContext, call: StageCall):
        # The loop's own tensor work (scheduler steps, guidance) is tiny; several instances with
        # torch thread pools of their own would only compete with the stage models for the cores.
        torch.set_num_threads(1)
        folder = context.folder()
        deployment = folder.deployment
        store = resolve_store(context.parameters.concept_store, context.repo_root, deployment.spec)
        self.store = StoreSync(store, deployment.spec, max_pack_bytes=context.parameters.max_pack_bytes)
        routing = context.parameters.routing(deployment)
        executor = TritonExecutor(
            deployment, call, routing, pin=self.store.store.pin_lora, device=torch.device(context.device)
        )
        limits = context.parameters.limits(deployment)
        self.pipeline = ConceptPipeline(executor, folder.tokenizers(), self.store.registry, limits)

    def handle(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Images `[N, H, W, 3]` uint8 for one request; bad fields raise InputError naming the field."""
        request = decode_request(inputs)
        self.store.refresh()
        return to_uint8(self.pipeline.generate(request))
