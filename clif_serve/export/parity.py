"""Acceptance check of an exported stage: ONNX Runtime against the PyTorch module it was traced from.

Tolerance. Both sides compute in float32; they differ only in the order of floating-point
operations (kernel blocking, fused ops, reassociated reductions). For a reduction of length n the
rounding error grows like sqrt(n) * 2^-24 on average (n * 2^-24 worst case); over the depth of a
UNet (about a hundred matmul/conv/norm layers, inner sizes up to a few thousand) that stays around
1e-5 of the output's magnitude, and 1e-6 to 4e-6 absolute is what the tiny models show. A wrong
export (a missed input, a transposed weight, a mis-traced branch, a dynamic axis frozen to the
tracing size) changes outputs by O(1) of their magnitude. The default tolerance, 1e-3 times
max(1, max |PyTorch output|) per output, sits two orders above the rounding noise and three below
the errors it must catch; a recipe may set another `parity_tolerance`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort
import torch

from clif_serve.errors import ClifServeError
from clif_serve.export.traces import StageTrace


class ExportParityError(ClifServeError):
    """An exported stage disagrees with PyTorch beyond the tolerance: the export is refused."""


def quiet_session_options() -> ort.SessionOptions:
    """Session options that log errors only (zero-initialised LoRA inputs otherwise warn per input)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return options


def _as_tuple(outputs) -> tuple[torch.Tensor, ...]:
    return tuple(outputs) if isinstance(outputs, tuple | list) else (outputs,)


def compare(expected: Sequence[torch.Tensor], actual: Sequence[np.ndarray], names: Sequence[str]) -> dict:
    """Per-output max abs diff and the output's scale max(1, max |expected|)."""
    result = {}
    for name, want, got in zip(names, expected, actual, strict=True):
        want = want.detach().to(torch.float32).numpy()
        if want.shape != got.shape:
            raise ExportParityError(
                f"output {name}: ONNX Runtime gave shape {got.shape}, PyTorch {want.shape}"
            )
        diff = float(np.max(np.abs(got.astype(np.float32) - want))) if want.size else 0.0
        result[name] = {
            "max_abs_diff": diff,
            "scale": max(1.0, float(np.max(np.abs(want))) if want.size else 1.0),
        }
    return result


def check_stage(stage: StageTrace, session: ort.InferenceSession, tolerance: float) -> dict:
    """Run every parity case of `stage`; raise ExportParityError above tolerance, else return the figures."""
    cases = []
    worst = 0.0
    for case in stage.cases:
        with torch.inference_mode():
            expected = _as_tuple(stage.module(*case.args))
        actual = session.run(list(stage.output_names), case.feed)
        outputs = compare(expected, actual, stage.output_names)
        shapes = {name: list(array.shape) for name, array in case.feed.items() if ".lora_" not in name}
        cases.append({"case": case.label, "input_shapes": shapes, "outputs": outputs})
        for name, figures in outputs.items():
            worst = max(worst, figures["max_abs_diff"])
            if not figures["max_abs_diff"] <= tolerance * figures["scale"]:
                raise ExportParityError(
                    f"stage {stage.name}, case '{case.label}', output {name}: max |ORT - PyTorch| = "
                    f"{figures['max_abs_diff']:.3g} exceeds the tolerance {tolerance:g} x {figures['scale']:.3g}; "
                    "the export is refused"
                )
    return {"max_abs_diff": worst, "tolerance": tolerance, "cases": cases}
