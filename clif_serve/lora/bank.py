"""The LoRA bank: many LoRA sets resident side by side, one per slot, picked per sample (Punica/S-LoRA).

For every LoRA target module (an attention projection `[out, in]`) the bank stacks the factors of
all slots: A `[S, R, in]` and B `[S, out, R]`. Slot 0 holds zeros (no LoRA); a set of rank r < R
fills its first r rows/columns and leaves the rest zero, which adds exact zeros (zero padding is
exact). B is stored multiplied by the set's `alpha / rank` (`scaled_up`), so the graph applies no
scale. For a batch with slot index `slot [B]` each target computes

    y = base(x) + bmm(bmm(x, A[slot]^T), B[slot]^T)        (gather + two batched matmuls)

so samples with different LoRA sets share one UNet execution, and filling a slot changes tensors,
not the graph: no re-export, no engine rebuild, no refit.

`BankLinear` is that module (traced into the `unet_bank` stage and run by the PyTorch executor);
`LoraBank` holds the bank's arrays (numpy, contiguous, shared with torch without a copy) and fills
or clears one slot. Which slot holds which set is `clif_serve.lora.slots.SlotTable`'s job.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from clif_serve.lora.math import scaled_up
from clif_serve.lora.naming import (
    BANK_A_SUFFIX,
    BANK_B_SUFFIX,
    bank_input_names,
    bank_input_shape,
    bank_module,
)
from clif_serve.lora.weights import LoraWeights
from clif_serve.models.sharing import sharing_copy
from clif_serve.models.spec import ModelSpec

# The buffer of every BankLinear that holds the per-sample slot index (one tensor fed to all).
SLOT_BUFFER = "lora_slot"


class BankLinear(nn.Module):
    """A Linear layer plus the LoRA update of each sample's slot: `base(x) + (x A[slot]^T) B[slot]^T`.

    The bank factors and the slot index are buffers, so `torch.func.functional_call` supplies them
    per call (the `unet_bank` trace) or they point into a `LoraBank` (the PyTorch executor).
    `x` is `[B, ..., in]` (attention projections see `[B, tokens, in]`).
    """

    def __init__(self, base: nn.Linear, slots: int, rank: int):
        super().__init__()
        self.base = base
        weight = base.weight
        self.register_buffer(BANK_A_SUFFIX[1:], torch.zeros(slots, rank, base.in_features, dtype=weight.dtype))
        self.register_buffer(BANK_B_SUFFIX[1:], torch.zeros(slots, base.out_features, rank, dtype=weight.dtype))
        self.register_buffer(SLOT_BUFFER, torch.zeros(1, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        slot = getattr(self, SLOT_BUFFER)
        down = getattr(self, BANK_A_SUFFIX[1:])[slot]  # [B, R, in]
        up = getattr(self, BANK_B_SUFFIX[1:])[slot]  # [B, out, R]
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        delta = torch.bmm(torch.bmm(flat, down.transpose(1, 2)), up.transpose(1, 2))
        return out + delta.reshape(out.shape)


def with_bank(unet: nn.Module, spec: ModelSpec, slots: int, rank: int, share_weights: bool = False) -> nn.Module:
    """A copy of `unet` whose LoRA target modules are `BankLinear`s of `slots` slots of rank `rank`.

    `share_weights`: the copy uses the same parameter tensors as `unet` (no second set of weights).
    """
    banked = sharing_copy(unet) if share_weights else copy.deepcopy(unet)
    for module in sorted(spec.lora_targets):
        parent_name, _, child = module.rpartition(".")
        parent = banked.get_submodule(parent_name) if parent_name else banked
        setattr(parent, child, BankLinear(getattr(parent, child), slots, rank))
    return banked.requires_grad_(False)


def slot_buffers(spec: ModelSpec) -> tuple[str, ...]:
    """Names of the slot-index buffers of a banked UNet (one per target; all get the same tensor)."""
    return tuple(f"{module}.{SLOT_BUFFER}" for module in sorted(spec.lora_targets))


class LoraBank:
    """The bank's arrays for one base model: `slots` slots (slot 0 = no LoRA) of rank `rank`.

    Arrays are float32 and contiguous, named like the `unet_bank` inputs; `fill` and `clear` write
    one slot in place, so views of them (OrtValues, torch tensors) see the change without a copy, and
    a bank over a session's device buffers (`storage`) fills those buffers directly.
    A caller must not fill a slot a running execution reads (the slot table guarantees it).
    """

    def __init__(self, spec: ModelSpec, slots: int, rank: int, storage: Mapping | None = None):
        """`storage`: the zeroed float32 arrays to fill, by bank input name (writable views of buffers that
        a session reads, e.g. `ResidentBank`'s OrtValues; numpy arrays or torch tensors); default: new
        numpy arrays."""
        if slots < 2 or rank < 1:
            raise ValueError(f"a LoRA bank needs slots >= 2 (slot 0 is no LoRA) and rank >= 1, got {slots}, {rank}")
        self.spec = spec
        self.slots = slots
        self.rank = rank
        shapes = {name: bank_input_shape(spec, name, slots, rank) for name in bank_input_names(spec)}
        if storage is None:
            storage = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
        if set(storage) != set(shapes) or any(tuple(storage[name].shape) != shape for name, shape in shapes.items()):
            raise ValueError("the bank's storage must hold exactly its inputs, each of its [S, R, in] / [S, out, R] shape")
        self.arrays = dict(storage)

    @property
    def nbytes_per_slot(self) -> int:
        """Bytes one slot takes (every target's A and B at the bank rank)."""
        return sum(array.nbytes for array in self.arrays.values()) // self.slots

    def fill(self, slot: int, lora: LoraWeights) -> None:
        """Write `lora` into `slot` (1..slots-1): A as is, B times alpha/rank, zero-padded to the bank rank.

        PackError (naming the field) for a set that is invalid, not for this base model, or of a
        rank above the bank's; the slot is then left as it was.
        """
        self._check_slot(slot)
        lora.validate()
        lora.validate_against(self.spec.lora_targets)
        lora.validate_rank(self.rank)
        for name, array in self.arrays.items():
            array[slot] = 0.0
            _, key = bank_module(name)
            if key not in lora.tensors:
                continue
            value = scaled_up(lora, key)  # a CPU torch tensor: numpy and torch (any device) targets take it
            if name.endswith(BANK_A_SUFFIX):
                array[slot, : lora.rank, :] = value
            else:
                array[slot, :, : lora.rank] = value

    def clear(self, slot: int) -> None:
        """Zero `slot` (it then adds nothing, like slot 0)."""
        self._check_slot(slot)
        for array in self.arrays.values():
            array[slot] = 0.0

    def tensors(self) -> dict[str, torch.Tensor]:
        """The arrays as torch tensors sharing their memory."""
        return {name: torch.from_numpy(array) for name, array in self.arrays.items()}

    def _check_slot(self, slot: int) -> None:
        if not 1 <= slot < self.slots:
            raise ValueError(f"slot {slot} is outside 1..{self.slots - 1} (slot 0 is no LoRA and stays zero)")
