"""The served interface: model names and the tensors of `clif_pipeline` and `clif_concepts`.

This module is the one source of these names and types: the repository builder writes the
Triton configs from it and the client builds its requests from it, so the two cannot drift.
Every pipeline input is a request field of `GenerationRequest` of the same name; a Triton error
caused by a field's value starts with `<field>: ` (the text of `InputError`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from clif_serve.errors import InputError

PIPELINE_MODEL = "clif_pipeline"
CONCEPTS_MODEL = "clif_concepts"

IMAGES_OUTPUT = "images"  # UINT8 [N, H, W, 3]
RESULT_OUTPUT = "result"  # BYTES [1]: a `ConceptsReply` as JSON

# Control actions of `clif_concepts`.
ACTION_ADD = "add"
ACTION_REMOVE = "remove"
ACTION_LIST = "list"
ACTIONS = (ACTION_ADD, ACTION_REMOVE, ACTION_LIST)

# Text fields are refused above this size before any work (a prompt holds 75 tokens: a few hundred bytes).
MAX_TEXT_BYTES = 8 * 1024
MAX_NAME_BYTES = 256


@dataclass(frozen=True)
class Field:
    """One tensor of a served model: shape `[1]` (one value per request) unless `dims` says otherwise.

    `dims` excludes the batch dimension of batching models; `reshape` is the shape the backend
    sees when it differs (`()` turns a per-sample `[1]` into a scalar, so a batch is `[B]`).
    """

    name: str
    triton_type: str  # Triton data type without the TYPE_ prefix: BYTES, INT32, INT64, FP32, BOOL, UINT8
    optional: bool = True
    dims: tuple[int, ...] = (1,)
    reshape: tuple[int, ...] | None = None
    # BYTES inputs are UTF-8 text unless binary (a pack file).
    binary: bool = False
    # Largest accepted value of a BYTES input, checked before it is decoded (None: no limit here).
    max_bytes: int | None = None


PIPELINE_INPUTS = (
    Field("prompt", "BYTES", optional=False, max_bytes=MAX_TEXT_BYTES),
    Field("negative_prompt", "BYTES", max_bytes=MAX_TEXT_BYTES),
    Field("steps", "INT32"),
    Field("guidance_scale", "FP32"),
    Field("seed", "INT64"),
    Field("height", "INT32"),
    Field("width", "INT32"),
    Field("num_images", "INT32"),
)
PIPELINE_OUTPUTS = (Field(IMAGES_OUTPUT, "UINT8", optional=False, dims=(-1, -1, -1, 3)),)

CONCEPTS_INPUTS = (
    Field("action", "BYTES", optional=False, max_bytes=MAX_NAME_BYTES),
    Field("pack", "BYTES", binary=True),
    # The same bytes as base64 text, for clients that send plain JSON over HTTP (no binary tensors).
    Field("pack_base64", "BYTES"),
    Field("name", "BYTES", max_bytes=MAX_NAME_BYTES),
    Field("replace", "BOOL"),
)
CONCEPTS_OUTPUTS = (Field(RESULT_OUTPUT, "BYTES", optional=False),)


@dataclass(frozen=True)
class ConceptInfo:
    """One concept of the store, as `clif_concepts` describes it."""

    name: str
    trigger: str  # e.g. "<joe>", what a prompt names
    tokens: tuple[str, ...]  # the concept tokens the trigger expands to
    class_word: str
    lora: bool  # whether the pack carries a UNet LoRA
    lora_set: str | None  # the LoRA set's content id (packs trained together share it)


@dataclass(frozen=True)
class SkippedPack:
    """A pack the store holds but this deployment cannot serve (it can be removed, or replaced)."""

    name: str
    reason: str


@dataclass(frozen=True)
class ConceptsReply:
    """The `result` of every `clif_concepts` action: the action, the concept it named, whether the
    store changed, and the store after it."""

    action: str
    concept: str | None  # the name added or removed (None for list)
    changed: bool  # False for list, and for an add of a pack the store already held (a retried add)
    concepts: tuple[ConceptInfo, ...]  # every concept in the store now, by name
    skipped: tuple[SkippedPack, ...]  # packs in the store that are not served, with the reason
    version: str  # the store version after the action (changes with every accepted add/remove)

    def to_json(self) -> bytes:
        """The reply as JSON bytes (the `result` output's one element)."""
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> ConceptsReply:
        """Parse a `result` element back into a reply."""
        values = json.loads(data)
        concepts = tuple(ConceptInfo(**{**c, "tokens": tuple(c["tokens"])}) for c in values.pop("concepts"))
        skipped = tuple(SkippedPack(**s) for s in values.pop("skipped"))
        return cls(concepts=concepts, skipped=skipped, **values)


def decode_fields(inputs: Mapping[str, np.ndarray], fields: Sequence[Field]) -> dict[str, object]:
    """Python values of one-value inputs (text, bytes, int, float, bool); absent optional ones are left out."""
    values: dict[str, object] = {}
    for field in fields:
        array = inputs.get(field.name)
        if array is None:
            if not field.optional:
                raise InputError(field.name, "is required")
            continue
        flat = np.asarray(array).reshape(-1)
        if flat.size != 1:
            raise InputError(field.name, f"must hold exactly one value, got shape {list(np.shape(array))}")
        value = flat[0]
        if field.triton_type != "BYTES":
            if not isinstance(value, np.generic) or value.dtype.kind not in "biuf":
                raise InputError(field.name, f"must be a {field.triton_type} value, got {type(value).__name__}")
            values[field.name] = value.item()
            continue
        if not isinstance(value, (bytes, str)):
            raise InputError(field.name, f"must be bytes, got {type(value).__name__}")
        size = len(value) if isinstance(value, bytes) else len(value.encode("utf-8", "surrogatepass"))
        if field.max_bytes is not None and size > field.max_bytes:
            raise InputError(field.name, f"is {size} bytes long, over the limit of {field.max_bytes}")
        if field.binary:
            values[field.name] = bytes(value)
        else:
            try:
                values[field.name] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
            except UnicodeDecodeError as exc:
                raise InputError(field.name, f"is not valid UTF-8 ({exc})") from exc
    return values
