"""What `clif_pipeline` does with a request: decode fields, sync concepts, run ConceptPipeline.

The pipeline is the in-process `ConceptPipeline` over a `TritonExecutor`, so served and
in-process generation share the prompt expansion, the validation and THE sampling loop.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from clif_serve.export.layout import MANIFEST, ExportFolder
from clif_serve.models.spec import ModelSpec
from clif_serve.runtime.images import to_uint8
from clif_serve.runtime.pipeline import ConceptPipeline
from clif_serve.runtime.request import GenerationRequest, RequestLimits
from clif_serve.serving.concept_sync import StoreSync, resolve_store
from clif_serve.serving.protocol import PIPELINE_INPUTS, decode_fields
from clif_serve.serving.triton_executor import StageCall, TritonExecutor


def read_model_folder(folder: Path) -> ExportFolder:
    """The manifest and tokenizers that `clif-serve repo` copied next to a model's model.py."""
    manifest = json.loads((folder / MANIFEST).read_text())
    return ExportFolder(folder, manifest, ModelSpec.from_dict(manifest["model_spec"]))


def decode_request(inputs: Mapping[str, np.ndarray]) -> GenerationRequest:
    """A GenerationRequest from the pipeline's input tensors (absent optional inputs keep defaults)."""
    return GenerationRequest(**decode_fields(inputs, PIPELINE_INPUTS))


class PipelineService:
    """One `clif_pipeline` instance: a ConceptPipeline on stage calls, synced with the concept store."""

    def __init__(self, version_dir: Path, repo_root: Path, call: StageCall, parameters: Mapping[str, str]):
        # The loop's own tensor work (scheduler steps, guidance) is tiny; several instances with
        # torch thread pools of their own would only compete with the stage models for the cores.
        torch.set_num_threads(1)
        folder = read_model_folder(version_dir)
        spec = folder.spec
        lora_stage, merged = parameters.get("lora_stage", ""), parameters.get("merged_lora") or None
        store = resolve_store(parameters.get("concept_store", ""), repo_root, spec)
        self.store = StoreSync(store, spec, lora_stage, merged)
        limits = RequestLimits(**json.loads(parameters.get("limits") or "{}"))
        executor = TritonExecutor(spec, call, int(parameters["concept_rows"]), lora_stage, merged)
        self.pipeline = ConceptPipeline(executor, folder.tokenizers(), self.store.registry, limits)

    def handle(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Images `[N, H, W, 3]` uint8 for one request; bad fields raise InputError naming the field."""
        request = decode_request(inputs)
        self.store.refresh()
        return to_uint8(self.pipeline.generate(request))
