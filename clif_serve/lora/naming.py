"""peft key naming of LoRA tensors, which also names the LoRA inputs of the exported `unet_lora` stage.

A and B of every attention projection of the base UNet: `<module>.lora_A.weight` `[rank, in]` and
`<module>.lora_B.weight` `[out, rank]`. (No torch here: the deployment contract imports this.)
"""

from __future__ import annotations

from typing import TypeVar

from clif_serve.models.spec import ModelSpec

LORA_A_SUFFIX = ".lora_A.weight"
LORA_B_SUFFIX = ".lora_B.weight"
Rank = TypeVar("Rank")


def lora_input_names(spec: ModelSpec) -> tuple[str, ...]:
    """The LoRA inputs of `unet_lora`: A and B of every attention projection, in peft key naming."""
    return tuple(
        name
        for module in sorted(spec.lora_targets)
        for name in (module + LORA_A_SUFFIX, module + LORA_B_SUFFIX)
    )


def lora_input_shape(spec: ModelSpec, name: str, rank: Rank) -> tuple[Rank | int, Rank | int]:
    """Shape of one LoRA input at `rank` (a number, or a symbolic axis): A is `[rank, in]`, B is `[out, rank]`."""
    module = name.rsplit(".lora_", 1)[0]
    in_features, out_features = spec.lora_targets[module]
    return (rank, in_features) if name.endswith(LORA_A_SUFFIX) else (out_features, rank)


# The LoRA bank of the `unet_bank` stage: per target module, the A factors of every slot stacked
# `[slots, rank, in]` and the B factors `[slots, out, rank]`; slot 0 holds zeros (no LoRA).
BANK_A_SUFFIX = ".lora_bank_A"
BANK_B_SUFFIX = ".lora_bank_B"


def bank_input_names(spec: ModelSpec) -> tuple[str, ...]:
    """The bank inputs of `unet_bank`: stacked A and B of every attention projection."""
    return tuple(
        name for module in sorted(spec.lora_targets) for name in (module + BANK_A_SUFFIX, module + BANK_B_SUFFIX)
    )


def bank_input_shape(spec: ModelSpec, name: str, slots: Rank, rank: Rank) -> tuple:
    """Shape of one bank input: A is `[slots, rank, in]`, B is `[slots, out, rank]`."""
    module = name.rsplit(".lora_bank_", 1)[0]
    in_features, out_features = spec.lora_targets[module]
    return (slots, rank, in_features) if name.endswith(BANK_A_SUFFIX) else (slots, out_features, rank)


def bank_module(name: str) -> tuple[str, str]:
    """`<module>.lora_bank_A` -> (`<module>`, the peft key of the matching LoRA tensor)."""
    module, factor = name.rsplit(".lora_bank_", 1)
    return module, module + (LORA_A_SUFFIX if factor == "A" else LORA_B_SUFFIX)
