"""Will an export fit in this machine's memory? Estimated from the model folder before anything is loaded.

The exporter (see `exporter`) holds at most, at once:

* while loading: every component's float32 weights;
* while tracing the stages in order (text encoders, UNet, VAE): the components still needed (a
  component is freed after its last stage), plus a LoRA-merged UNet copy with `--merge-lora`,
  plus what tracing the stage adds (TRACE_OVERHEAD of its weights);
* while checking parity, after the PyTorch model is freed: one onnxruntime session of the largest
  stage (ORT_SESSION times its weights) and its activations at the recipe's largest parity case
  (ACTIVATIONS: attention scores at 4096 tokens dominate, for SD1.5 at 512 px and SDXL at 1024 px).

Plus the interpreter with torch, onnxruntime and diffusers imported (BASELINE). The factors are
measurements with full-size SD1.5 on CPU (benchmarks/results/full_size.md): estimated 8.0 GiB,
measured 7.6. For full-size SDXL the estimate is 14.9 GiB and the export measured 18.5 GiB: its
peak came while tracing the VAE decoder at 1024 px with ~11.5 GiB still resident, which this model
does not capture; the check is therefore a lower bound, good for refusing what cannot fit. An export whose estimate exceeds the memory available now fails at once, naming what
it needs, instead of being killed by the system an hour later; `CLIF_SERVE_SKIP_MEMORY_CHECK=1`
skips the check.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from clif_serve.errors import ClifServeError
from clif_serve.models.loading import component_weight_bytes

GIB = 2**30
BASELINE = int(1.5 * GIB)
TRACE_OVERHEAD = 0.35
ORT_SESSION = 1.0
ACTIVATIONS = int(3.25 * GIB)
SKIP_ENV = "CLIF_SERVE_SKIP_MEMORY_CHECK"
_UNET = "unet"


class ExportMemoryError(ClifServeError):
    """The export would need more memory than the machine has available."""


def _export_order(weights: dict[str, int]) -> list[str]:
    """Components in the order their stages are traced: text encoders, UNet, VAE (others: never traced)."""
    encoders = sorted(name for name in weights if name.startswith("text_encoder"))
    return encoders + [name for name in (_UNET, "vae") if name in weights]


def export_memory_need(weights: dict[str, int], merged_lora: bool = False) -> tuple[int, str]:
    """Estimated peak bytes of exporting a model with these float32 component sizes, and why."""
    total = sum(weights.values())
    order = _export_order(weights)
    phases = {"loading": (total, f"loading its {total / GIB:.1f} GiB of float32 weights")}
    for index, name in enumerate(order):
        resident = sum(weights[later] for later in order[index:]) + sum(
            size for other, size in weights.items() if other not in order
        )
        copy = weights[name] if merged_lora and name == _UNET else 0
        phases[f"tracing {name}"] = (
            resident + copy + TRACE_OVERHEAD * weights[name],
            f"tracing the {weights[name] / GIB:.1f} GiB {name} with {resident / GIB:.1f} GiB of PyTorch weights resident"
            + (" and a LoRA-merged copy" if copy else ""),
        )
    largest = max(order or weights, key=lambda name: weights[name])
    phases["checking"] = (
        ORT_SESSION * weights[largest] + ACTIVATIONS,
        f"onnxruntime running the {weights[largest] / GIB:.1f} GiB {largest} for its parity check",
    )
    peak, why = max(phases.values())
    return int(BASELINE + peak), why


def check_export_memory(folder: Path, merged_lora: bool = False, available: int | None = None) -> None:
    """Raise ExportMemoryError if exporting the model in `folder` cannot fit in the available memory."""
    if os.environ.get(SKIP_ENV) == "1":
        return
    weights = component_weight_bytes(folder)
    if not weights:
        return
    need, why = export_memory_need(weights, merged_lora)
    available = psutil.virtual_memory().available if available is None else available
    if need > available:
        raise ExportMemoryError(
            f"exporting {folder} needs about {need / GIB:.1f} GiB of memory ({why}); "
            f"{available / GIB:.1f} GiB are available. Free memory or export on a machine with at least "
            f"{need / GIB:.1f} GiB available (set {SKIP_ENV}=1 to try anyway)"
        )
