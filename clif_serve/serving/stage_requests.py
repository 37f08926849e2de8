"""Per-request checks of a stage model, run before a request joins an onnxruntime batch.

A stage model runs all compatible requests of a dynamic batch as one onnxruntime call, so one bad
request would fail its batch-mates. Every request is therefore checked alone against the
deployment contract first, and a request that fails gets its own error while the others run:

* each tensor of the stage signature is present, of its dtype and rank, with the same batch size
  (within the deployment's batch range) as the request's other tensors;
* fixed dims match; concept-table rows equal the served rows; image axes (latents: pixels divided
  by the VAE factor) lie within the deployment's height/width range and are multiples of its
  request size multiple;
* float tensors are finite; token ids lie in `[0, vocab + served concept rows)` (ids at or above
  the vocabulary index the concept table);
* `lora_id` (unet_lora with adapters, unet_bank) is one LoRA set id, the same for every sample, or empty;
* region inputs (unet_lora with region slots): `region_masks` are masks on the sample's latent
  grid, weights in [0, 1] whose sum over the slots is at most 1 at every cell (regions do not
  overlap, docs/regions.md); `region_hidden_states` are finite like every float tensor.

The checks read numpy arrays (host) and torch tensors (a CUDA stage's inputs, checked on the GPU)
alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from clif_serve.contract.deployment import Deployment
from clif_serve.contract.stages import BATCH, CONCEPT_ROWS, REGION_MASKS, Axis, TensorSpec
from clif_serve.errors import InputError
from clif_serve.lora.weights import validate_set_id
from clif_serve.runtime.ort_device import array_module, dtype_name, has_dtype
from clif_serve.runtime.regions import OVERLAP_TOLERANCE
from clif_serve.serving.signatures import request_tensors


@dataclass(frozen=True)
class _Dim:
    """What one per-sample dimension of a stage tensor may be."""

    low: int
    high: int
    step: int = 1  # values must be multiples of it

    def check(self, field: str, axis: int, value: int) -> None:
        if not self.low <= value <= self.high or value % self.step:
            allowed = f"{self.low}" if self.low == self.high else f"in [{self.low}, {self.high}]"
            multiple = f", a multiple of {self.step}" if self.step > 1 else ""
            raise InputError(field, f"dimension {axis} must be {allowed}{multiple}, got {value}")


class StageRequestCheck:
    """Checks one request's tensors for a stage of a deployment (see the module docstring)."""

    def __init__(self, deployment: Deployment, stage: str, lora_id: str | None = None):
        self.stage = stage
        self.tensors = request_tensors(deployment, stage)
        self.batch = deployment.batch
        self.lora_id = lora_id
        ranges = deployment.axis_ranges()
        multiple = deployment.limits.size_multiple
        self._dims = {tensor.name: [_dim(d, deployment, ranges, multiple) for d in tensor.dims[1:]] for tensor in self.tensors}
        self._dtypes = {tensor.name: np.dtype(tensor.dtype) for tensor in self.tensors}
        encoder = next((e for e in deployment.spec.text_encoders if e.name == stage), None)
        # Token ids index the vocabulary, then the served concept table.
        self._id_limit = None if encoder is None else encoder.vocab_size + deployment.served_concept_rows

    @property
    def tensor_names(self) -> list[str]:
        """The contract tensors a request sends (the stage's inputs, less unet_bank's slot index)."""
        return [tensor.name for tensor in self.tensors]

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str | None]:
        """The request's stage feed and its LoRA set id (None: no adapter); InputError naming the tensor."""
        feed = {}
        batch = None
        for tensor in self.tensors:
            array = inputs.get(tensor.name)
            if array is None:
                raise InputError(tensor.name, "is required")
            self._check_array(tensor, array)
            if batch is None:
                batch = array.shape[0]
                if batch not in self.batch:
                    raise InputError(tensor.name, f"batch of {batch} samples is outside [{self.batch.min}, {self.batch.max}]")
            elif array.shape[0] != batch:
                raise InputError(tensor.name, f"has {array.shape[0]} samples, the request's other inputs {batch}")
            feed[tensor.name] = array
        if REGION_MASKS in feed:
            _check_region_masks(feed[REGION_MASKS], feed["sample"].shape[2:])
        return feed, self._adapter(inputs.get(self.lora_id) if self.lora_id else None, batch)

    def _check_array(self, tensor: TensorSpec, array: np.ndarray) -> None:
        name = tensor.name
        expected = self._dtypes[name]
        if not has_dtype(array, expected):
            raise InputError(name, f"must be {tensor.dtype}, got {dtype_name(array)}")
        dims = self._dims[name]
        if array.ndim != len(dims) + 1:
            raise InputError(name, f"must have {len(dims) + 1} dimensions (batch first), got shape {list(array.shape)}")
        for axis, (dim, value) in enumerate(zip(dims, array.shape[1:], strict=True), start=1):
            dim.check(name, axis, value)
        if expected.kind == "f":
            if not array_module(array).isfinite(array).all():
                raise InputError(name, "contains NaN or Inf values")
        elif self._id_limit is not None and _size(array) and (array.min() < 0 or array.max() >= self._id_limit):
            raise InputError(
                name,
                f"token ids must be in [0, {self._id_limit}) (vocabulary, then the concept table's rows), "
                f"got {int(array.min())}..{int(array.max())}",
            )

    def _adapter(self, values: np.ndarray | None, batch: int | None) -> str | None:
        if values is None:
            return None
        name = self.lora_id
        flat = values.reshape(-1)
        if batch is not None and flat.size != batch:
            raise InputError(name, f"must hold one value per sample ({batch}), got {flat.size}")
        ids = {bytes(value) if isinstance(value, (bytes, np.bytes_)) else None for value in flat}
        if None in ids or len(ids) != 1:
            raise InputError(name, "must be one LoRA set id (bytes), the same for every sample of the request")
        (raw,) = ids
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise InputError(name, f"{raw[:40]!r} is not a LoRA set id (16 lowercase hex digits)") from None
        return validate_set_id(text, name) if text else None


def _check_region_masks(masks: np.ndarray, latent: tuple[int, ...]) -> None:
    """`region_masks [B, R, h, w]`: on the sample's latent grid, weights in [0, 1], not overlapping."""
    if tuple(masks.shape[2:]) != tuple(latent):
        raise InputError(REGION_MASKS, f"masks are {list(masks.shape[2:])}, the sample's latent grid is {list(latent)}")
    if _size(masks) and (masks.min() < 0 or masks.max() > 1):
        raise InputError(REGION_MASKS, "weights must lie in [0, 1]")
    if _size(masks) and masks.sum(axis=1).max() > 1 + OVERLAP_TOLERANCE:
        raise InputError(REGION_MASKS, "regions overlap: the slots' weights sum to more than 1 at some cell")


def _size(array) -> int:
    """Elements of a numpy array or torch tensor (torch's `.size` is a method)."""
    return math.prod(array.shape)


def _dim(dim, deployment: Deployment, ranges, multiple: int) -> _Dim:
    """The allowed values of one per-sample dimension of the contract (past the batch axis)."""
    if not isinstance(dim, Axis):
        return _Dim(dim, dim)
    if dim == CONCEPT_ROWS:
        rows = deployment.served_concept_rows
        return _Dim(rows, rows)
    if dim == BATCH:
        raise ValueError("the batch axis comes first only")
    scaled = ranges[dim.name].scaled(dim.divisor)
    step = multiple // dim.divisor if dim.name in ("height", "width") and multiple % dim.divisor == 0 else 1
    return _Dim(scaled.min, scaled.max, max(1, step))
