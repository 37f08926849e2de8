"""LoRA adapters of the `unet_lora` stage model, built from the packs of the concept store.

A request names its adapter by the LoRA set id (a content hash, `LoraWeights.set_id`), so a cached
adapter is always the right one. On a miss the stage syncs with the store, finds a pack carrying
that set and turns its LoRA into an onnxruntime adapter with the exporter's `write_adapter`.
"""

from __future__ import annotations

import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

import onnxruntime as ort

from clif_serve.errors import PackError
from clif_serve.export.adapters import write_adapter
from clif_serve.export.layout import UNET_LORA_STAGE
from clif_serve.serving.concept_sync import StoreSync, resolve_store
from clif_serve.serving.service import read_model_folder


class AdapterCache:
    """onnxruntime adapters by LoRA set id, least recently used dropped beyond `capacity`."""

    def __init__(self, sync: StoreSync, capacity: int = 16):
        self.sync = sync
        self.capacity = capacity
        self._adapters: OrderedDict[str, ort.LoraAdapter] = OrderedDict()

    def _lora(self, set_id: str):
        self.sync.refresh()
        for pack in self.sync.registry.snapshot().values():
            if pack.lora is not None and pack.lora.set_id == set_id:
                return pack.lora
        raise PackError("lora_id", f"no concept in the store carries LoRA set {set_id}")

    def get(self, set_id: str) -> ort.LoraAdapter:
        """The adapter of a LoRA set, built on first use."""
        if set_id in self._adapters:
            self._adapters.move_to_end(set_id)
            return self._adapters[set_id]
        lora = self._lora(set_id)
        handle, name = tempfile.mkstemp(suffix=".onnx_adapter")
        os.close(handle)
        try:
            adapter = ort.LoraAdapter()
            # onnxruntime loads adapters from files only, reading them whole; the file can go at once.
            adapter.Load(str(write_adapter(lora, self.sync.registry.spec, Path(name))))
        finally:
            os.unlink(name)
        self._adapters[set_id] = adapter
        while len(self._adapters) > self.capacity:
            self._adapters.popitem(last=False)
        return adapter


def adapter_loader(
    version_dir: Path, repo_root: Path, parameters: Mapping[str, str]
) -> Callable[[str], ort.LoraAdapter]:
    """The `unet_lora` stage's adapter source: the concept store of its base model."""
    spec = read_model_folder(version_dir).spec
    store = resolve_store(parameters.get("concept_store", ""), repo_root, spec)
    return AdapterCache(StoreSync(store, spec, lora_stage=UNET_LORA_STAGE)).get
