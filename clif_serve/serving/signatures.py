"""Triton tensor signatures of the stage models, derived from the deployment contract.

A contract tensor `[batch, ...]` becomes a per-sample Triton tensor (the stage models batch
dynamically, so the batch axis is left out); the concept-table axis is fixed to the deployment's
`served_concept_rows` (so requests naming different concepts batch on every backend), image axes
are variable (-1). A tensor that is one scalar per sample (`timestep [batch]`) is sent as `[1]`
and reshaped to a scalar, so a batch is `[B]`. `unet_lora` on a backend that takes adapters has
one more input, `lora_id`, that routes each request to its adapter (it is not fed to ONNX);
`unet_bank` takes `lora_id` instead of `lora_slot` (the stage model maps sets to its bank's slots).
"""

from __future__ import annotations

from clif_serve.contract.deployment import Deployment
from clif_serve.contract.stages import BATCH, CONCEPT_ROWS, LORA_SLOT, UNET_BANK, UNET_LORA, Axis, TensorSpec
from clif_serve.serving.protocol import Field

LORA_ID_INPUT = "lora_id"
_TRITON_TYPES = {"float32": "FP32", "int64": "INT64"}


def triton_field(tensor: TensorSpec, concept_rows: int) -> Field:
    """The per-sample Triton field of a batched contract tensor."""
    if tensor.dims[:1] != (BATCH,):
        raise ValueError(f"{tensor.name}: a batched stage tensor must start with the batch axis, got {tensor.dims}")
    rest = tensor.dims[1:]
    kind = _TRITON_TYPES[tensor.dtype]
    if not rest:
        return Field(tensor.name, kind, optional=False, dims=(1,), reshape=())
    dims = tuple(
        concept_rows if d == CONCEPT_ROWS else -1 if isinstance(d, Axis) else d for d in rest
    )
    return Field(tensor.name, kind, optional=False, dims=dims)


def request_tensors(deployment: Deployment, stage: str) -> tuple[TensorSpec, ...]:
    """The contract tensors a request sends to a stage model (all inputs but unet_bank's slot index)."""
    return tuple(t for t in deployment.signature(stage).inputs if t.name != LORA_SLOT)


def stage_fields(
    deployment: Deployment, stage: str, adapters: bool = False
) -> tuple[tuple[Field, ...], tuple[Field, ...]]:
    """Triton inputs and outputs of a stage model; `adapters`: the backend runs unet_lora adapters."""
    signature = deployment.signature(stage)
    rows = deployment.served_concept_rows
    inputs = tuple(triton_field(t, rows) for t in request_tensors(deployment, stage))
    if stage == UNET_BANK or (stage == UNET_LORA and adapters):
        inputs += (Field(LORA_ID_INPUT, "BYTES", optional=True),)
    return inputs, tuple(triton_field(t, rows) for t in signature.outputs)
