"""`unet_bank` on TensorRT: the LoRA bank as engine inputs bound once to persistent device buffers.

The bank's inputs (`StageSignature.bank_inputs`: every target's `[S, R, in]` A and `[S, out, R]` B,
one static shape each) are allocated once on the GPU and their addresses set on the execution
context once (`set_tensor_address`); a slot fill (`LoraBank.fill` over those buffers) writes into
them in place, so switching LoRA sets needs no rebuild and no refit. Per call only the request
tensors and the per-sample slot index `lora_slot [batch]` are bound.

What needs no TensorRT is separate and unit-tested: which inputs are resident and their shapes and
dtypes (`bank_binding_plan`, from the export's contract), and the optimisation profiles
(`tensorrt.stage_profiles` covers the bank inputs at their one shape). `TensorRTBankRunner` imports
`tensorrt` (and uses torch for the CUDA buffers) only when constructed; it is written against the
TensorRT 10 Python API documentation (named tensors, `execute_async_v3`) and has NOT been run:
tensorrt cannot be installed, and there is no GPU, where this was developed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from clif_serve.contract.deployment import Deployment
from clif_serve.contract.stages import LORA_SLOT, UNET_BANK
from clif_serve.errors import ClifServeError
from clif_serve.export.tensorrt import import_tensorrt
from clif_serve.lora.bank import LoraBank


@dataclass(frozen=True)
class BoundTensor:
    """An engine input bound once: its name, static shape and element type."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class BankBindingPlan:
    """How the `unet_bank` engine's tensors are bound: the resident bank, the per-call inputs, the outputs."""

    resident: tuple[BoundTensor, ...]
    per_call: tuple[str, ...]  # the request tensors, bound on every call (the slot index among them)
    outputs: tuple[str, ...]
    slot_input: str = LORA_SLOT


def bank_binding_plan(deployment: Deployment) -> BankBindingPlan:
    """The binding plan of a deployment's `unet_bank` (ClifServeError when it has none)."""
    if not deployment.has_unet_bank:
        raise ClifServeError("this export has no unet_bank stage: export with a recipe that has a lora_bank")
    signature = deployment.signature(UNET_BANK)
    resident = []
    for tensor in signature.bank_inputs:
        low, _, high = deployment.shape_ranges(tensor)
        if low != high:
            raise ClifServeError(f"bank input {tensor.name} has no single shape ({low} .. {high})")
        resident.append(BoundTensor(tensor.name, tuple(low), tensor.dtype))
    return BankBindingPlan(tuple(resident), signature.input_names, signature.output_names)


class TensorRTBankRunner:
    """A `unet_bank` TensorRT engine with its LoRA bank resident on GPU `device_index`.

    `bank` is the `LoraBank` over the engine's persistent bank buffers (give it to a `SlotTable`).
    Not run (see the module docstring).
    """

    def __init__(self, engine_path: str | Path, deployment: Deployment, device_index: int = 0):
        self.plan = bank_binding_plan(deployment)
        trt = import_tensorrt()
        import torch

        self._torch = torch
        self.device = torch.device("cuda", device_index)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise ClifServeError(f"TensorRT could not load the engine {engine_path}")
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        expected = {t.name for t in self.plan.resident} | set(self.plan.per_call) | set(self.plan.outputs)
        if names != expected:
            raise ClifServeError(f"{engine_path} is not this export's unet_bank engine (tensors differ: {sorted(names ^ expected)[:4]})")
        self.context = self.engine.create_execution_context()
        self.buffers = {t.name: torch.zeros(t.shape, dtype=torch.float32, device=self.device) for t in self.plan.resident}
        for name, buffer in self.buffers.items():  # bound once; fills write into these buffers
            self.context.set_tensor_address(name, buffer.data_ptr())
        self.bank = LoraBank(deployment.spec, deployment.bank_slots, deployment.bank_rank, storage=self.buffers)
        self.stream = torch.cuda.Stream(self.device)

    def run(self, inputs: Mapping[str, object], slots) -> dict[str, object]:
        """The outputs of one call: `inputs` by name (torch tensors), `slots` each sample's bank slot [batch]."""
        torch = self._torch
        bound = {name: inputs[name].to(self.device).contiguous() for name in self.plan.per_call if name != self.plan.slot_input}
        bound[self.plan.slot_input] = torch.as_tensor(slots, dtype=torch.int64).to(self.device).contiguous()
        for name, tensor in bound.items():
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.plan.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=torch.float32, device=self.device)
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        # Inputs and slot fills were written on the current stream; the engine must see them.
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ClifServeError("TensorRT failed to run the unet_bank engine")
        self.stream.synchronize()
        return outputs
