"""Helpers shared by the Triton Python-backend adapters (`*_model.py`); importable only in the stub.

A value error in a request (`InputError`, including `PackError`) becomes an INVALID_ARG Triton
error whose text starts with the field name; anything else becomes INTERNAL (and is logged).
Either way the model answers every request and keeps serving. These modules import only what
their model needs, so a stage model's process does not load torch.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable, Mapping

import numpy as np
import triton_python_backend_utils as pb_utils

from clif_serve.errors import InputError
from clif_serve.runtime.ort_device import OrtDevice

log = logging.getLogger(__name__)


class StageError(RuntimeError):
    """A stage model answered a BLS request with an error."""


def inputs_of(request, names: Iterable[str], device: OrtDevice = OrtDevice()) -> dict:
    """The request's tensors among `names` as arrays of `device` (absent optional inputs left out):
    numpy on the host; on CUDA numeric tensors on the GPU, taken over DLPack where Triton handed them
    in GPU memory (`FORCE_CPU_ONLY_INPUT_TENSORS: no`), copied there once otherwise."""
    tensors = ((name, pb_utils.get_input_tensor_by_name(request, name)) for name in names)
    return {
        name: device.asarray(tensor.as_numpy() if tensor.is_cpu() else tensor)
        for name, tensor in tensors
        if tensor is not None
    }


def pb_tensor(name: str, value):
    """A `pb_utils.Tensor`: numpy arrays (strings included) by value, anything else (torch tensors on
    the host or a GPU) over DLPack, in the memory it is in."""
    return pb_utils.Tensor(name, value) if isinstance(value, np.ndarray) else pb_utils.Tensor.from_dlpack(name, value)


def response(outputs: Mapping[str, object]):
    """A successful response with the given output tensors."""
    return pb_utils.InferenceResponse([pb_tensor(name, value) for name, value in outputs.items()])


def error_response(exc: BaseException):
    """INVALID_ARG naming the field for InputError, INTERNAL for anything else."""
    if isinstance(exc, InputError):
        return pb_utils.InferenceResponse(
            error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
        )
    log.error("request failed: %s", "".join(traceback.format_exception(exc)))
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}"))


def bls_call(model: str, inputs: Mapping[str, object], outputs: tuple[str, ...], device: str = "cpu") -> dict:
    """Run another model of this server (Business Logic Scripting); the named outputs as DLPack capsules.

    Tensors go in over DLPack where they are (`pb_tensor`); on a CUDA `device` the request asks for its
    outputs in that GPU's memory (`PreferredMemory`), so a step's tensors never cross to the host.
    """
    where = OrtDevice.parse(device)
    memory = {}
    if where.is_cuda:
        memory["preferred_memory"] = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_GPU, where.index)
    request = pb_utils.InferenceRequest(
        model_name=model,
        inputs=[pb_tensor(name, value) for name, value in inputs.items()],
        requested_output_names=list(outputs),
        **memory,
    )
    result = request.exec()
    if result.has_error():
        raise StageError(f"{model}: {result.error().message()}")
    return {name: pb_utils.get_output_tensor_by_name(result, name).to_dlpack() for name in outputs}
