"""Where an onnxruntime session's tensors live: the host, or one CUDA device.

This is the ONE place that decides per device what a stage does with its tensors; the stage
runner, the served and in-process LoRA banks and the request checks call it and have no device
branches of their own. On the host, arrays are numpy (as onnxruntime's `run` takes them); on a
CUDA device they are torch tensors on that device (torch imported only then), exchanged with
onnxruntime by device pointer (IOBinding) and DLPack, so nothing crosses to the host.

The CUDA side is written against the onnxruntime 1.32 and torch APIs (IOBinding `bind_input` /
`bind_output` on "cuda", `OrtValue.__dlpack__`, `torch.from_dlpack`) but has NOT been run: the
machines this was developed on have no GPU and no onnxruntime-gpu. The host side is what every
CPU test runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # onnxruntime is imported where a session is made; the BLS models need none
    import onnxruntime as ort

CPU, CUDA = "cpu", "cuda"


def is_torch(array) -> bool:
    """Whether `array` is a torch tensor (checked without importing torch)."""
    return type(array).__module__.startswith("torch")


def array_module(array):
    """numpy for numpy arrays, torch for torch tensors (both have `isfinite`, `.min()`, `.sum(axis=)`)."""
    if is_torch(array):
        import torch

        return torch
    return np


def dtype_name(array) -> str:
    """The element type of a numpy array or torch tensor as numpy names it (`float32`, `int64`)."""
    return str(array.dtype).removeprefix("torch.")


def has_dtype(array, expected: np.dtype) -> bool:
    """Whether a numpy array or torch tensor holds `expected` (numpy arrays compare dtypes directly: a
    dtype's name is slow to build, and the stage checks ask this for every tensor of every request)."""
    return array.dtype == expected if isinstance(array, np.ndarray) else dtype_name(array) == expected.name


@dataclass(frozen=True)
class OrtDevice:
    """`cpu`, or CUDA device `index`, of an onnxruntime session and of the arrays it runs on."""

    kind: str = CPU
    index: int = 0

    @classmethod
    def parse(cls, text: str) -> OrtDevice:
        """From `cpu`, `cuda` or `cuda:N` (a torch device string)."""
        kind, _, index = text.partition(":")
        if kind not in (CPU, CUDA):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {text!r}")
        return cls(kind, int(index or 0) if kind == CUDA else 0)

    def __str__(self) -> str:
        return CPU if self.kind == CPU else f"{CUDA}:{self.index}"

    @property
    def is_cuda(self) -> bool:
        return self.kind == CUDA

    @property
    def providers(self) -> list:
        """Execution providers of a session on this device (CUDA falls back to CPU for unsupported nodes)."""
        if self.is_cuda:
            return [("CUDAExecutionProvider", {"device_id": self.index}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def asarray(self, value):
        """`value` (numpy array, torch tensor, or any DLPack object such as a `pb_utils.Tensor`) as an
        array of this device: numpy on the host; on CUDA a torch tensor there (no copy if it is there
        already). String (object) arrays stay numpy: they never leave the host."""
        if isinstance(value, np.ndarray) and (not self.is_cuda or value.dtype == object):
            return value
        if not self.is_cuda:
            return np.from_dlpack(value)
        import torch

        tensor = torch.from_numpy(value) if isinstance(value, np.ndarray) else torch.from_dlpack(value)
        return tensor.to(str(self))

    def to_host(self, array) -> np.ndarray:
        """A numpy array of `array`'s values (for onnxruntime `run`, which adapters need)."""
        return array.detach().cpu().numpy() if is_torch(array) else array

    def concatenate(self, arrays: Sequence) -> object:
        """The arrays joined along the batch axis, on this device."""
        if is_torch(arrays[0]):
            import torch

            return torch.cat(list(arrays))
        return np.concatenate(arrays)

    def bind_input(self, binding: ort.IOBinding, name: str, array) -> None:
        """Bind `array`'s memory (this device's, contiguous) as input `name`; the array must outlive the run."""
        contiguous = array.is_contiguous() if is_torch(array) else array.flags.c_contiguous
        if not contiguous:
            raise ValueError(f"input {name} is not contiguous: bind a contiguous copy and keep it alive")
        pointer = array.data_ptr() if is_torch(array) else array.ctypes.data
        binding.bind_input(name, self.kind, self.index, np.dtype(dtype_name(array)), list(array.shape), pointer)

    def synchronize(self) -> None:
        """Wait for this device's pending torch work (concatenations, slot fills) before onnxruntime,
        which runs on a stream of its own, reads the memory; nothing to wait for on the host."""
        if self.is_cuda:
            import torch

            torch.cuda.synchronize(self.index)

    def bind_output(self, binding: ort.IOBinding, name: str) -> None:
        """Let onnxruntime allocate output `name` in this device's memory."""
        binding.bind_output(name, self.kind, self.index)

    def from_ort(self, value: ort.OrtValue):
        """An onnxruntime output as an array of this device, sharing its memory (DLPack)."""
        if self.is_cuda:
            import torch

            return torch.from_dlpack(value)
        return np.from_dlpack(value)

    def zeros(self, shape: Sequence[int]) -> ort.OrtValue:
        """A float32 OrtValue of zeros allocated in this device's memory."""
        import onnxruntime as ort

        value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, self.kind, self.index)
        self.view(value)[...] = 0
        return value

    def view(self, value: ort.OrtValue):
        """A writable array over an OrtValue's memory (writes change what the next bound run reads)."""
        if self.is_cuda:
            import torch

            return torch.from_dlpack(value)
        return value.numpy()  # a CPU OrtValue's numpy() shares its memory
