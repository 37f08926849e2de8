"""Acceptance check of an exported stage: ONNX Runtime against the PyTorch module it was traced from.

The check runs in two halves so that a multi-GB stage is never held twice: `reference_outputs`
runs the PyTorch module on every parity case (the exporter can then free the PyTorch model), and
`check_reference` later runs an onnxruntime session of the saved graph on the same inputs.

Tolerance, per stage and per export size. Both sides compute in float32 and differ only in the
order of floating-point operations (kernel blocking, fused ops, reassociated reductions). A
reduction of length n (an inner product of a matmul or convolution, the statistics of a
normalisation, a softmax over n keys) rounds to about u * sqrt(n) of its result's scale when the
order changes (random-walk rounding; u = 2^-24 is float32's unit roundoff; the worst case n * u
needs every rounding to go the same way). Normalised networks keep activations at unit scale layer after layer, so
the independent errors of all a stage's reductions add in quadrature: the expected relative
difference of an output is sigma = u * sqrt(sum of n over every reduction the stage runs), and the
largest of millions of output elements lies a few sigma out. The tolerance on
max |ORT - PyTorch| / max |PyTorch| is therefore

    tolerance = MARGIN * u * sqrt(sum n),   MARGIN = 4,

counted at the size of each parity case (`count_reductions` hooks the PyTorch modules while the
reference outputs are computed, so the sum grows with the image size: a full-size VAE decoder's
group norms reduce over a million values at 512 px, a UNet's over tens of thousands).
Full-size SD1.5 at 512 px gets 7.7e-5 (text encoder), 2.9e-4 (UNet) and 6.4e-4 (VAE decoder), the
tiny models 6e-6 to 4e-5; the differences measured are 14x (VAE) to 200x (UNet) smaller
(recorded per stage as `max_abs_diff` and `max_rel_diff`), while a wrong export (a missed input, a
transposed weight, a mis-traced branch, a dynamic axis frozen to the tracing size) changes
outputs by O(1) of their scale. A recipe may fix one `parity_tolerance` for every stage instead.

A parity case must be well-conditioned for this to hold: inputs whose outputs move by more than
the tolerance when PyTorch itself rounds differently (fp32 against fp64) cannot tell a correct
export from a wrong one. `tests/export/test_parity_cases.py` checks that for the LoRA case.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from clif_serve.errors import ClifServeError
from clif_serve.export.traces import StageTrace

UNIT_ROUNDOFF = 2.0**-24
MARGIN = 4.0


class ExportParityError(ClifServeError):
    """An exported stage disagrees with PyTorch beyond the tolerance: the export is refused."""



@dataclass
class ReductionCount:
    """The reductions one forward pass ran: how many, their summed length and the longest."""

    reductions: int = 0
    total_length: int = 0
    longest: int = 0

    def add(self, length: int) -> None:
        self.reductions += 1
        self.total_length += length
        self.longest = max(self.longest, length)

    def tolerance(self) -> float:
        """MARGIN * u * sqrt(sum n): see the module docstring."""
        return MARGIN * UNIT_ROUNDOFF * math.sqrt(max(1, self.total_length))

    def to_dict(self) -> dict:
        return {"reductions": self.reductions, "summed_length": self.total_length, "longest": self.longest}


def _tokens(tensor: torch.Tensor) -> int:
    """Sequence length of `[B, N, C]` activations, or H * W of `[B, C, H, W]` ones."""
    return int(tensor.shape[1]) if tensor.dim() == 3 else int(np.prod(tensor.shape[2:]))


def _reduction_length(module: nn.Module, args: tuple, kwargs: dict) -> int | None:
    """The length of the longest reduction `module` runs on these inputs (None: not a reducing layer)."""
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, nn.Conv2d):
        return module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
    if isinstance(module, nn.GroupNorm):
        return args[0].numel() // (args[0].shape[0] * module.num_groups)
    if isinstance(module, nn.LayerNorm):
        return int(np.prod(module.normalized_shape))
    heads = getattr(module, "heads", None) or getattr(module, "num_heads", None)
    queries = args[0] if args else kwargs.get("hidden_states")
    if type(module).__name__.endswith("Attention") and heads and isinstance(queries, torch.Tensor):
        keys = kwargs.get("encoder_hidden_states")
        return _tokens(keys if keys is not None else queries)  # the softmax and the weighted sum run over the keys
    return None


@contextmanager
def count_reductions(module: nn.Module) -> Iterator[ReductionCount]:
    """Count the reductions of every forward pass of `module` inside the block (forward hooks)."""
    count = ReductionCount()

    def hook(layer, args, kwargs, _output):
        length = _reduction_length(layer, args, kwargs)
        if length:
            count.add(length)

    handles = [layer.register_forward_hook(hook, with_kwargs=True) for layer in module.modules()]
    try:
        yield count
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class CaseReference:
    """One parity case: the onnxruntime feed and the PyTorch outputs with their tolerance."""

    label: str
    feed: dict[str, np.ndarray]
    expected: tuple[np.ndarray, ...]
    tolerance: float
    reductions: ReductionCount


@dataclass(frozen=True)
class StageReference:
    """The PyTorch half of a stage's parity check (computed before onnxruntime loads the stage)."""

    stage: str
    output_names: tuple[str, ...]
    cases: tuple[CaseReference, ...]
    fixed_tolerance: float | None


def _as_tuple(outputs) -> tuple[torch.Tensor, ...]:
    return tuple(outputs) if isinstance(outputs, tuple | list) else (outputs,)


def reference_outputs(stage: StageTrace, fixed_tolerance: float | None = None) -> StageReference:
    """Run the PyTorch module on every parity case; count its reductions for the derived tolerance."""
    cases = []
    for case in stage.cases:
        with torch.inference_mode(), count_reductions(stage.module) as count:
            expected = _as_tuple(stage.module(*case.args))
        arrays = tuple(tensor.detach().to(torch.float32).numpy() for tensor in expected)
        tolerance = fixed_tolerance if fixed_tolerance is not None else count.tolerance()
        cases.append(CaseReference(case.label, case.feed, arrays, tolerance, count))
    return StageReference(stage.name, stage.output_names, tuple(cases), fixed_tolerance)


def compare(expected: Sequence[np.ndarray], actual: Sequence[np.ndarray], names: Sequence[str]) -> dict:
    """Per output: max |ORT - PyTorch|, the output's scale max |PyTorch| and their ratio."""
    result = {}
    for name, want, got in zip(names, expected, actual, strict=True):
        if want.shape != got.shape:
            raise ExportParityError(f"output {name}: ONNX Runtime gave shape {got.shape}, PyTorch {want.shape}")
        diff = float(np.max(np.abs(got.astype(np.float32) - want))) if want.size else 0.0
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        result[name] = {
            "max_abs_diff": diff,
            "scale": scale,
            "max_rel_diff": diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf),
        }
    return result


def check_reference(reference: StageReference, session: ort.InferenceSession) -> dict:
    """Run every case on `session`; raise ExportParityError above tolerance, else return the figures."""
    cases = []
    for case in reference.cases:
        actual = session.run(list(reference.output_names), case.feed)
        outputs = compare(case.expected, actual, reference.output_names)
        shapes = {name: list(array.shape) for name, array in case.feed.items() if ".lora_" not in name}
        cases.append(
            {"case": case.label, "input_shapes": shapes, "tolerance": case.tolerance,
             "reductions": case.reductions.to_dict(), "outputs": outputs}
        )
        for name, figures in outputs.items():
            if not figures["max_rel_diff"] <= case.tolerance:
                raise ExportParityError(
                    f"stage {reference.stage}, case '{case.label}', output {name}: max |ORT - PyTorch| = "
                    f"{figures['max_abs_diff']:.3g} is {figures['max_rel_diff']:.3g} of the output's scale "
                    f"{figures['scale']:.3g}, above the tolerance {case.tolerance:.3g}; the stage is refused"
                )
    every = [figures for case in cases for figures in case["outputs"].values()]
    return {
        "max_abs_diff": max(f["max_abs_diff"] for f in every),
        "max_rel_diff": max(f["max_rel_diff"] for f in every),
        "tolerance": min(case["tolerance"] for case in cases),
        "tolerance_rule": "fixed by the recipe" if reference.fixed_tolerance is not None else "4 u sqrt(sum n)",
        "cases": cases,
    }
