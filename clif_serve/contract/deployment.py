"""`Deployment`: the one value that says what an export folder is.

The exporter builds it from the base model and the recipe and writes it into the export's
manifest (`"deployment"`); the ONNX Runtime executor, the Triton repository writer, the Triton
models, the concept store sync and the TensorRT builder read it back. It holds the base model's
`ModelSpec`, the stages, the ranges every stage accepts, the LoRA set merged into `unet`, the
region slots of `unet_lora`, and derives from them the stage signatures, the served
concept-table rows, the request limits and the UNet routing. A deployment with `unet_bank` also
holds its bank's shape: `bank_slots` slots (slot 0 = no LoRA, so `bank_slots - 1` LoRA sets are
resident at once) of rank `bank_rank`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

from clif_serve.contract.ranges import Range
from clif_serve.contract.requests import RequestLimits, size_multiple
from clif_serve.contract.routing import LoraRouting
from clif_serve.contract.stages import (
    UNET_BANK,
    UNET_LORA,
    Axis,
    Dim,
    StageSignature,
    TensorSpec,
    stage_signature,
)
from clif_serve.models.spec import ModelSpec

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Deployment:
    """What an export serves: base model, stages, accepted ranges and the merged LoRA set."""

    spec: ModelSpec
    stages: tuple[str, ...]
    batch: Range  # samples per stage call (classifier-free guidance: two per image)
    height: Range  # image pixels, multiples of spec.image_multiple
    width: Range
    concept_rows: Range  # rows of the concept table the text-encoder graphs accept
    lora_rank: Range  # ranks of the LoRA inputs of unet_lora
    merged_lora: str | None = None  # the LoRA set folded into unet's weights
    regions: int = 0  # region slots R of unet_lora (region-aware cross-attention); 0: none
    bank_slots: int = 0  # rows S of unet_bank's LoRA bank, slot 0 included (0: no unet_bank)
    bank_rank: int = 0  # rank R every bank slot is zero-padded to

    @property
    def has_unet_lora(self) -> bool:
        return UNET_LORA in self.stages

    @property
    def region_slots(self) -> int:
        """Regions a request may carry: the region slots of `unet_lora` (0 without that stage)."""
        return self.regions if self.has_unet_lora else 0

    @property
    def has_unet_bank(self) -> bool:
        return UNET_BANK in self.stages

    @property
    def served_concept_rows(self) -> int:
        """Rows of every concept table a server sends: the largest K, at most the tokens a prompt holds.

        A fixed row count makes every text-encoder request the same shape, so a dynamic batcher
        merges requests naming different concepts on every backend without ragged batching; rows
        a sample does not use stay zero and are never indexed.
        """
        return min(self.concept_rows.max, self.spec.max_length - 2)

    @property
    def limits(self) -> RequestLimits:
        """Request limits: image sizes valid on both axes, images that fit one UNet batch."""
        return RequestLimits(
            min_size=max(self.height.min, self.width.min),
            max_size=min(self.height.max, self.width.max),
            size_multiple=size_multiple(self.spec.image_multiple),
            max_images=max(1, self.batch.max // 2),
            max_regions=self.region_slots,
        )

    @cached_property
    def _signatures(self) -> dict[str, StageSignature]:
        # Built once: the sampling loop reads a stage's signature on every stage call.
        return {stage: stage_signature(self.spec, stage, self.regions) for stage in self.stages}

    def signature(self, stage: str) -> StageSignature:
        """Inputs and outputs of one of this deployment's stages."""
        if stage not in self._signatures:
            raise KeyError(f"{stage!r} is not a stage of this deployment ({', '.join(self.stages)})")
        return self._signatures[stage]

    def routing(self, adapters: bool, regions: bool = True) -> LoraRouting:
        """The UNet routing on a backend that can (`adapters`) or cannot supply LoRA inputs the requests
        do not send: onnxruntime adapters, or the resident bank of `unet_bank` (the Python backend and
        the in-process executors can; Triton's native onnxruntime and TensorRT backends only run what a
        request sends, so there `unet_bank` is not served). `regions=False`: regional requests are not
        served even where the export has region slots."""
        return LoraRouting(
            self.merged_lora,
            self.has_unet_lora,
            adapters,
            regions and self.region_slots > 0,
            self.has_unet_bank and adapters,
        )

    def axis_ranges(self) -> dict[str, Range]:
        """The range of every symbolic axis (the bank's axes are one value each, and only with a bank)."""
        ranges = {
            "batch": self.batch,
            "height": self.height,
            "width": self.width,
            "concept_rows": self.concept_rows,
            "lora_rank": self.lora_rank,
        }
        if self.has_unet_bank:
            ranges["bank_slots"] = Range(self.bank_slots, self.bank_slots, self.bank_slots)
            ranges["bank_rank"] = Range(self.bank_rank, self.bank_rank, self.bank_rank)
        return ranges

    def shape_ranges(
        self, tensor: TensorSpec, overrides: Mapping[str, Range] | None = None
    ) -> tuple[Shape, Shape, Shape]:
        """(min, opt, max) shapes of a tensor; `overrides` narrows axes (a TensorRT profile's batch/size)."""
        ranges = self.axis_ranges() | dict(overrides or {})

        def values(dim: Dim) -> tuple[int, int, int]:
            if isinstance(dim, Axis):
                return tuple(ranges[dim.name].scaled(dim.divisor).as_list())
            return dim, dim, dim

        per_dim = [values(dim) for dim in tensor.dims]
        return tuple(tuple(v[i] for v in per_dim) for i in range(3))  # type: ignore[return-value]

    def to_dict(self) -> dict:
        """JSON form, as written into the export manifest."""
        return {
            "model_spec": self.spec.to_dict(),
            "stages": list(self.stages),
            **{name: value.as_list() for name, value in self.axis_ranges().items() if not name.startswith("bank_")},
            "merged_lora": self.merged_lora,
            "regions": self.regions,
            "bank_slots": self.bank_slots,
            "bank_rank": self.bank_rank,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Deployment:
        """Inverse of `to_dict`."""
        return cls(
            spec=ModelSpec.from_dict(data["model_spec"]),
            stages=tuple(data["stages"]),
            batch=Range.of(data["batch"]),
            height=Range.of(data["height"]),
            width=Range.of(data["width"]),
            concept_rows=Range.of(data["concept_rows"]),
            lora_rank=Range.of(data["lora_rank"]),
            merged_lora=data.get("merged_lora"),
            regions=int(data.get("regions", 0)),
            bank_slots=int(data.get("bank_slots", 0)),
            bank_rank=int(data.get("bank_rank", 0)),
        )
