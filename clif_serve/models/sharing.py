"""Copies of a module's structure that share its weights (used by the LoRA bank and the exporter)."""

from __future__ import annotations

import copy

from torch import nn


def sharing_copy(module: nn.Module) -> nn.Module:
    """A copy of `module`'s structure that shares its parameters and buffers (no weight is copied).

    Replacing or wrapping the copy's submodules (peft LoRA layers, `BankLinear`) leaves `module` as it was.
    """
    memo = {id(tensor): tensor for tensor in (*module.parameters(), *module.buffers())}
    return copy.deepcopy(module, memo)
