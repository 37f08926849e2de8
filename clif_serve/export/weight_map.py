"""Which ONNX initializer holds which UNet parameter (the peft/diffusers name).

The dynamo exporter keeps a parameter's name for the initializers it uses as they are (convolution
weights, biases, norms), but it folds the transpose of every `nn.Linear` weight into a new
initializer with a generated name (`val_172`, stored `[in, out]`). TensorRT refits weights by ONNX
initializer name, and a LoRA touches exactly those Linear weights, so the map is built once at
export time, where both sides are at hand: by name where the name survived, otherwise by content
(the initializer equals the parameter or its transpose, byte for byte). Initializers whose content
matches several parameters are left out: refitting them would change every one of those parameters.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clif_serve.errors import ClifServeError


class WeightMapError(ClifServeError):
    """A weight needed for a refit or a LoRA has no unambiguous ONNX initializer."""


@dataclass(frozen=True)
class WeightRef:
    """An ONNX initializer's source: a UNet parameter, stored as is or transposed (`[in, out]`)."""

    parameter: str
    transposed: bool


def _digest(array: np.ndarray) -> tuple[tuple[int, ...], str, str]:
    contiguous = np.ascontiguousarray(array)
    return contiguous.shape, str(contiguous.dtype), hashlib.sha256(contiguous.tobytes()).hexdigest()


def build_weight_map(
    initializers: Mapping[str, np.ndarray], parameters: Mapping[str, np.ndarray], prefix: str = ""
) -> dict[str, WeightRef]:
    """Map initializer names to the parameters they hold.

    `parameters` are keyed by their PyTorch names (e.g. `down_blocks.1...attn1.to_q.weight`);
    initializers named `prefix + name` with equal content map directly, others by content.
    """
    by_content: dict[tuple, list[WeightRef]] = {}
    for name, value in parameters.items():
        by_content.setdefault(_digest(value), []).append(WeightRef(name, False))
        if value.ndim == 2:
            by_content.setdefault(_digest(value.T), []).append(WeightRef(name, True))
    mapping = {}
    for init_name, value in initializers.items():
        direct = init_name[len(prefix) :] if init_name.startswith(prefix) else None
        if direct in parameters and np.array_equal(parameters[direct], value):
            mapping[init_name] = WeightRef(direct, False)
            continue
        matches = by_content.get(_digest(value), [])
        if len(matches) == 1:
            mapping[init_name] = matches[0]
    return mapping


def holders(weight_map: Mapping[str, WeightRef]) -> dict[str, list[tuple[str, bool]]]:
    """Parameter name -> the initializers holding it, each with whether it is transposed."""
    found: dict[str, list[tuple[str, bool]]] = {}
    for name, ref in weight_map.items():
        found.setdefault(ref.parameter, []).append((name, ref.transposed))
    return found


def lora_target_initializers(
    weight_map: Mapping[str, WeightRef], modules: list[str]
) -> dict[str, tuple[str, bool]]:
    """For each LoRA target module, the one initializer of its `.weight` and whether it is transposed."""
    found = holders(weight_map)
    targets = {}
    for module in modules:
        places = found.get(f"{module}.weight", [])
        if len(places) != 1:
            detail = (
                "no initializer"
                if not places
                else f"{len(places)} initializers ({', '.join(n for n, _ in places)})"
            )
            raise WeightMapError(f"UNet parameter {module}.weight is held by {detail} in the ONNX graph")
        targets[module] = places[0]
    return targets


def write_weight_map(weight_map: Mapping[str, WeightRef], path: Path) -> None:
    """Save as JSON: `{initializer: {"parameter": name, "transposed": bool}}`."""
    data = {
        name: {"parameter": ref.parameter, "transposed": ref.transposed}
        for name, ref in sorted(weight_map.items())
    }
    path.write_text(json.dumps(data, indent=1))


def read_weight_map(path: Path) -> dict[str, WeightRef]:
    """Read a map written by `write_weight_map`."""
    return {
        name: WeightRef(item["parameter"], bool(item["transposed"]))
        for name, item in json.loads(path.read_text()).items()
    }
