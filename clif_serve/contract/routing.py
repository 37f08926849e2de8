"""UNet routing: which UNet stage a request runs on, and with which LoRA adapter (or none).

Given a deployment (its merged LoRA set, whether it has the adapter UNet `unet_lora`, whether that
takes regions) and whether the backend running it can take onnxruntime LoRA adapters, every
request's LoRA set (None for a request whose concepts carry no LoRA) maps to one `UnetRoute`, or
is refused:

  LoRA set of the request        route
  the merged set                 `unet` (the LoRA is in its weights), no adapter
  none, nothing merged           `unet`, no adapter
  none, a set merged             `unet_bank` in slot 0 (no LoRA) if there is a bank, else
                                 `unet_lora` without adapter (its LoRA inputs default to zero)
  any other set, with a bank     `unet_bank` with that set in a bank slot (samples of different
                                 sets share one execution)
  any other set, without         `unet_lora` with that set as adapter, where adapters run

A request with regions always runs on `unet_lora` (the only UNet with region inputs): without
adapter when its concepts carry no LoRA, else with its set (the merged one too) as adapter.

Refusals name the request field (`prompt`: the concepts it names; `regions` when only the regions
make the route impossible) before any stage runs; the same check refuses such packs at hot-load. The in-process ONNX Runtime executor, the Triton
executor of `clif_pipeline`, the repository writer and the concept store all read this one value.
"""

from __future__ import annotations

from dataclasses import dataclass

from clif_serve.contract.stages import UNET, UNET_BANK, UNET_LORA
from clif_serve.errors import InputError


@dataclass(frozen=True)
class UnetRoute:
    """The UNet stage a request runs on and the LoRA set to activate there (None: none): an adapter
    of `unet_lora`, or a slot of `unet_bank`'s bank."""

    stage: str
    adapter: str | None = None


@dataclass(frozen=True)
class LoraRouting:
    """Routes of one deployment on one backend."""

    merged_lora: str | None
    has_unet_lora: bool
    adapters: bool  # whether `unet_lora` takes LoRA adapters on this backend
    regions: bool = False  # whether `unet_lora` takes region inputs
    has_unet_bank: bool = False

    @property
    def stages(self) -> tuple[str, ...]:
        """The UNet stages some request can reach (`unet_lora`: as the base of a merged export, for
        regions, or for adapters when there is no bank; `unet_bank`: for every non-merged set)."""
        reaches_lora = self.has_unet_lora and (
            (self.adapters and not self.has_unet_bank) or self.regions or self.merged_lora is not None
        )
        return (UNET, *((UNET_LORA,) if reaches_lora else ()), *((UNET_BANK,) if self.has_unet_bank else ()))

    @property
    def takes_adapters(self) -> bool:
        """Whether LoRA sets other than the merged one run as adapters of `unet_lora`."""
        return self.has_unet_lora and self.adapters and not self.has_unet_bank

    def route(self, lora_id: str | None, field: str = "prompt", regional: bool = False) -> UnetRoute:
        """The route of a request whose concepts carry LoRA set `lora_id` (None: no LoRA), with regions
        or not (`regional`)."""
        if regional:
            return self._regional_route(lora_id)
        if lora_id is not None and lora_id == self.merged_lora:
            return UnetRoute(UNET)
        if lora_id is None:
            if self.merged_lora is None:
                return UnetRoute(UNET)
            if self.has_unet_bank:
                return UnetRoute(UNET_BANK)
            if self.has_unet_lora:
                return UnetRoute(UNET_LORA)
            raise InputError(
                field,
                f"this deployment's unet has LoRA set {self.merged_lora} merged and it has no unet_lora stage, "
                "so it cannot run a request without that LoRA; use a concept of that set, or export with a "
                "recipe listing 'lora'",
            )
        if self.has_unet_bank:
            return UnetRoute(UNET_BANK, lora_id)
        if self.takes_adapters:
            return UnetRoute(UNET_LORA, lora_id)
        raise InputError(field, f"LoRA set {lora_id} cannot run here: {self.describe()}")

    def _regional_route(self, lora_id: str | None) -> UnetRoute:
        if not (self.regions and self.has_unet_lora):
            raise InputError(
                "regions",
                "this deployment takes no regions (its unet_lora has no region inputs); export with a recipe "
                "listing 'lora' and setting regions = N",
            )
        if lora_id is None:
            return UnetRoute(UNET_LORA)
        if self.adapters:  # with a bank too: the bank UNet has no region inputs
            return UnetRoute(UNET_LORA, lora_id)
        raise InputError(
            "regions",
            f"regions run on unet_lora, which cannot take LoRA set {lora_id} as an adapter here: {self.describe()}",
        )

    def validate(self, lora_id: str | None, field: str = "prompt", regional: bool = False) -> None:
        """Raise InputError naming the field when `lora_id` (with regions or not) has no route."""
        self.route(lora_id, field, regional)

    def describe(self) -> str:
        """What this deployment can run, for error messages."""
        if self.has_unet_bank:
            return "any LoRA set runs in a slot of unet_bank's LoRA bank"
        if self.takes_adapters:
            return "any LoRA set runs as an adapter of unet_lora"
        merged = f"only its merged LoRA set {self.merged_lora}" if self.merged_lora else "no LoRA set"
        why = "it has no unet_lora stage" if not self.has_unet_lora else "its backend runs unet_lora without adapters"
        return f"this deployment runs {merged} ({why}); serve an export with unet_lora on --backend python"
