"""LoRA adapters of the `unet_lora` stage model, built from the packs of the concept store.

A request names its adapter by the LoRA set id (a content hash, `LoraWeights.set_id`), so a cached
adapter is always the right one. On a miss the stage syncs with the store, finds a pack carrying
that set and turns its LoRA into an onnxruntime adapter (`clif_serve.lora.onnx`); the cache keeps
the `adapter_capacity` most recently used.
"""

from __future__ import annotations

import onnxruntime as ort

from clif_serve.concepts.sync import StoreSync
from clif_serve.errors import PackError
from clif_serve.lora.cache import PinnedCache
from clif_serve.lora.onnx import ActiveAdapter, load_adapter
from clif_serve.lora.weights import LoraWeights
from clif_serve.serving.concept_control import resolve_store
from clif_serve.serving.context import ModelContext


class AdapterCache:
    """onnxruntime adapters by LoRA set id, built from the store's packs on first use."""

    def __init__(self, sync: StoreSync, capacity: int = 16):
        self.sync = sync
        self._adapters: PinnedCache[ActiveAdapter] = PinnedCache(capacity)

    def _lora(self, set_id: str) -> LoraWeights:
        self.sync.refresh()
        for pack in self.sync.registry.snapshot().values():
            if pack.lora is not None and pack.lora.set_id == set_id:
                return pack.lora
        raise PackError("lora_id", f"no concept in the store carries LoRA set {set_id}")

    def get(self, set_id: str) -> ActiveAdapter:
        """The adapter of a LoRA set, built on first use."""
        return self._adapters.get(set_id, lambda: load_adapter(self._lora(set_id), self.sync.registry.spec))

    def run_options(self, set_id: str) -> ort.RunOptions:
        """The RunOptions that activate a LoRA set's adapter."""
        return self.get(set_id).run_options

    def cached(self) -> list[str]:
        """Ids of the adapters built now, least recently used first."""
        return self._adapters.keys()


def adapter_cache(context: ModelContext) -> AdapterCache:
    """The `unet_lora` stage's adapter source: the concept store of its base model."""
    spec = context.folder().spec
    store = resolve_store(context.parameters.concept_store, context.repo_root, spec)
    return AdapterCache(StoreSync(store, spec), context.parameters.adapter_capacity)
