"""Refit plans: which UNet weights to rewrite, and with what, when a TensorRT engine switches LoRA sets.

The engine is built from the plain `unet` stage, so its weights start as the base weights. Going
from LoRA set A to set B must write every weight that A *or* B touches: B's modules get
`base + B's update`, and modules only A touched get their base weights back. Writing only B's
modules (or only the weights that differ from the base) leaves A's updates in place on the modules
B does not touch, the stale-weights failure of NVIDIA/TensorRT#3628. Weights are in the ONNX
initializer's layout: the dynamo exporter stores Linear weights transposed (`[in, out]`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from clif_serve.lora.math import weight_with_lora
from clif_serve.lora.weights import LoraWeights


def refit_plan(
    targets: Mapping[str, tuple[str, bool]],
    base: Mapping[str, np.ndarray],
    previous: LoraWeights | None,
    new: LoraWeights | None,
) -> dict[str, np.ndarray]:
    """Initializer name -> value to refit when going from `previous` to `new` (either may be None).

    `targets` maps LoRA module -> (initializer, transposed) (see `weight_map.lora_target_initializers`);
    `base` gives the base value of an initializer by name.
    """
    if previous is not None and new is not None and previous.set_id == new.set_id:
        return {}
    touched = set(previous.modules if previous is not None else ()) | set(
        new.modules if new is not None else ()
    )
    plan = {}
    for module in sorted(touched):
        name, transposed = targets[module]
        plan[name] = weight_with_lora(base[name], module, transposed, new)
    return plan
