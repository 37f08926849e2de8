"""A LoRA bank resident on an onnxruntime session's device, bound to its runs with IOBinding.

The bank's inputs are OrtValues allocated once in the device's memory (`OrtDevice.zeros`) and given
to every run as they are (`IOBinding.bind_ortvalue_input` in the stage runner, `run_with_ort_values`
in process); the `LoraBank` that fills slots writes straight
into those OrtValues (its arrays are views of them), so a fill updates the bound bank in place and
nothing of the bank is copied per call. The served `unet_bank` stage and the in-process ONNX Runtime
executor both keep their bank here. On CPU this path is what the tests run; on CUDA the views are
torch tensors over device memory (filled from the host, one slot at a time) — written, not run
(no GPU where this was developed).
"""

from __future__ import annotations

from clif_serve.lora.bank import LoraBank
from clif_serve.lora.naming import bank_input_names, bank_input_shape
from clif_serve.models.spec import ModelSpec
from clif_serve.runtime.ort_device import OrtDevice


class ResidentBank:
    """`slots` x rank-`rank` bank inputs as OrtValues on `device`, and the `LoraBank` filling them."""

    def __init__(self, spec: ModelSpec, slots: int, rank: int, device: OrtDevice = OrtDevice()):
        self.device = device
        self.values = {name: device.zeros(bank_input_shape(spec, name, slots, rank)) for name in bank_input_names(spec)}
        self.bank = LoraBank(spec, slots, rank, storage={name: device.view(v) for name, v in self.values.items()})
