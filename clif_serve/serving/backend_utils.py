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

log = logging.getLogger(__name__)


class StageError(RuntimeError):
    """A stage model answered a BLS request with an error."""


def inputs_of(request, names: Iterable[str]) -> dict[str, np.ndarray]:
    """The request's tensors among `names` as numpy arrays (absent optional inputs left out)."""
    tensors = ((name, pb_utils.get_input_tensor_by_name(request, name)) for name in names)
    return {name: tensor.as_numpy() for name, tensor in tensors if tensor is not None}


def response(outputs: Mapping[str, np.ndarray]):
    """A successful response with the given output tensors."""
    return pb_utils.InferenceResponse([pb_utils.Tensor(name, value) for name, value in outputs.items()])


def error_response(exc: BaseException):
    """INVALID_ARG naming the field for InputError, INTERNAL for anything else."""
    if isinstance(exc, InputError):
        return pb_utils.InferenceResponse(
            error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
        )
    log.error("request failed: %s", "".join(traceback.format_exception(exc)))
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}"))


def bls_call(model: str, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Run another model of this server (Business Logic Scripting) and return the named outputs."""
    request = pb_utils.InferenceRequest(
        model_name=model,
        inputs=[pb_utils.Tensor(name, value) for name, value in inputs.items()],
        requested_output_names=list(outputs),
    )
    result = request.exec()
    if result.has_error():
        raise StageError(f"{model}: {result.error().message()}")
    return {name: pb_utils.get_output_tensor_by_name(result, name).as_numpy() for name in outputs}
