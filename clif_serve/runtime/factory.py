"""Ready-made pipelines."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from clif_serve.concepts.pack import ConceptPack
from clif_serve.concepts.registry import ConceptRegistry
from clif_serve.models.loading import load_base_model
from clif_serve.runtime.pipeline import ConceptPipeline
from clif_serve.runtime.torch_executor import TorchExecutor

if TYPE_CHECKING:
    from clif_serve.contract.ort_settings import OrtSettings


def torch_pipeline(
    model: str | Path = "tiny", packs: Iterable[ConceptPack] = (), device: str = "cpu", dtype=torch.float32
) -> ConceptPipeline:
    """An in-process PyTorch pipeline for `model` with `packs` loaded (each validated for the base)."""
    base = load_base_model(model, device=device, dtype=dtype)
    return ConceptPipeline(TorchExecutor(base), base.tokenizers, ConceptRegistry(base.spec, packs))


def ort_pipeline(
    export_dir: str | Path, packs: Iterable[ConceptPack] = (), settings: OrtSettings | None = None
) -> ConceptPipeline:
    """An in-process ONNX Runtime pipeline over an export folder with `packs` loaded; requests are
    held to the export's limits, as a server of that export holds them.

    `settings` (threads, spinning, providers, IOBinding) defaults to `OrtSettings()`.
    """
    from clif_serve.contract.ort_settings import OrtSettings
    from clif_serve.runtime.ort_executor import OrtExecutor

    executor = OrtExecutor(export_dir, settings if settings is not None else OrtSettings())
    registry = ConceptRegistry(executor.spec, packs)
    return ConceptPipeline(executor, executor.folder.tokenizers(), registry, executor.deployment.limits)
