"""LoRA adapters of the `unet_lora` stage model, built from the LoRA sets of the concept store.

A request names its adapter by the LoRA set id (a content hash, `LoraWeights.set_id`), so a cached
adapter is always the right one. On a miss the stage reads the set's content-addressed file from
the store (`ConceptStore.read_lora`), which the request's pipeline pinned before its first UNet
call (`ConceptStore.pin_lora`): a pack removed or replaced meanwhile does not take it away. The
cache keeps the `adapter_capacity` most recently used adapters.
"""

from __future__ import annotations

import onnxruntime as ort

from clif_serve.concepts.store import ConceptStore
from clif_serve.lora.cache import PinnedCache
from clif_serve.lora.onnx import ActiveAdapter, load_adapter
from clif_serve.models.spec import ModelSpec
from clif_serve.serving.concept_control import resolve_store
from clif_serve.serving.context import ModelContext


class AdapterCache:
    """onnxruntime adapters by LoRA set id, built from the store's LoRA files on first use."""

    def __init__(self, store: ConceptStore, spec: ModelSpec, capacity: int = 16):
        self.store = store
        self.spec = spec
        self._adapters: PinnedCache[ActiveAdapter] = PinnedCache(capacity)

    def _build(self, set_id: str) -> ActiveAdapter:
        return load_adapter(self.store.read_lora(set_id), self.spec)  # validated for the base as it is written

    def get(self, set_id: str) -> ActiveAdapter:
        """The adapter of a LoRA set, built on first use."""
        return self._adapters.get(set_id, lambda: self._build(set_id))

    def run_options(self, set_id: str) -> ort.RunOptions:
        """The RunOptions that activate a LoRA set's adapter."""
        return self.get(set_id).run_options

    def cached(self) -> list[str]:
        """Ids of the adapters built now, least recently used first."""
        return self._adapters.keys()


def stage_store(context: ModelContext) -> ConceptStore:
    """The concept store of a stage model's base model (where its LoRA sets come from)."""
    return ConceptStore(resolve_store(context.parameters.concept_store, context.repo_root, context.folder().spec))


def adapter_cache(context: ModelContext) -> AdapterCache:
    """The `unet_lora` stage's adapter source: the concept store of its base model."""
    return AdapterCache(stage_store(context), context.folder().spec, context.parameters.adapter_capacity)
