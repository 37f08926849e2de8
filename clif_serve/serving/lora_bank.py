"""The LoRA bank of the served `unet_bank` stage: resident between calls, slots filled from the store.

Each request names its LoRA set (`lora_id`, a content hash). For a dynamic batch the stage model
gives every set of the batch a slot (`SlotTable`: filled from the set's content-addressed file in
the concept store on a miss, which the request's pipeline pinned for the request's whole run) and
sends all requests through ONE onnxruntime call with each sample's slot index; the slots are held
until that call returns. A batch naming more sets than the bank holds runs in several calls (one
stage instance runs one batch at a time, so the only holders are the batch's own requests and
waiting could never end). The bank is a `ResidentBank`: OrtValues allocated once on the stage's
device and bound to every call (IOBinding); a fill writes one slot of them in place, never one a
running call reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from clif_serve.contract.stages import LORA_SLOT
from clif_serve.lora.slots import SlotTable
from clif_serve.runtime.ort_device import OrtDevice
from clif_serve.runtime.resident_bank import ResidentBank
from clif_serve.serving.context import ModelContext
from clif_serve.serving.lora_adapters import stage_store
from clif_serve.serving.stage_runner import Feed, StageRunner


class ServedBank:
    """A stage model's LoRA bank and the store its sets come from."""

    def __init__(self, context: ModelContext, device: OrtDevice = OrtDevice()):
        deployment = context.folder().deployment
        self.store = stage_store(context)
        self.device = device
        self.resident = ResidentBank(deployment.spec, deployment.bank_slots, deployment.bank_rank, device)
        self.table = SlotTable(self.resident.bank)

    @property
    def values(self) -> dict[str, ort.OrtValue]:
        """The bank inputs, bound to every call."""
        return self.resident.values

    def run(self, runner: StageRunner, feeds: Sequence[Feed], lora_ids: Sequence[str | None]) -> list:
        """Outputs per feed (or its exception), requests of up to `sets` distinct LoRA sets per call."""
        results: list = [None] * len(feeds)
        waiting = list(range(len(feeds)))
        capacity = self.table.bank.slots - 1
        while waiting:
            chunk, sets = [], []
            for index in waiting:
                set_id = lora_ids[index]
                if set_id is not None and set_id not in sets:
                    if len(sets) == capacity:
                        continue
                    sets.append(set_id)
                chunk.append(index)
            waiting = [index for index in waiting if index not in chunk]
            slots, held = {None: 0}, []
            for set_id in sets:
                try:
                    slots[set_id] = self.table.acquire_id(set_id, lambda s=set_id: self.store.read_lora(s))
                    held.append(set_id)
                except Exception as exc:  # a set that cannot be loaded fails its own requests only
                    for index in chunk:
                        if lora_ids[index] == set_id:
                            results[index] = exc
            chunk = [index for index in chunk if lora_ids[index] is None or lora_ids[index] in held]
            try:
                with_slots = [self._with_slot(feeds[i], slots[lora_ids[i]]) for i in chunk]
                for index, result in zip(chunk, runner.run(with_slots), strict=True):
                    results[index] = result
            finally:
                for set_id in held:
                    self.table.release(set_id)
        return results


    def _with_slot(self, feed: Feed, slot: int) -> dict:
        samples = len(next(iter(feed.values())))
        return {**feed, LORA_SLOT: self.device.asarray(np.full(samples, slot, np.int64))}
