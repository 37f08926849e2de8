"""One ONNX stage run with onnxruntime over a dynamic batch of Triton requests.

All requests of a batch whose tensors agree in shape (past the batch dimension) and in LoRA
adapter are concatenated along the batch dimension, run as ONE onnxruntime call, and the outputs
are split back per request. Requests naming different concepts batch together, because concepts
travel as per-sample concept tables; requests of different LoRA adapters never share a run (the
LoRA bank of `unet_bank` exists for that: its slot index is one more per-sample input, and the bank
itself is a `resident` feed, the same arrays on every run).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

Feed = Mapping[str, np.ndarray]
# LoRA set id -> the RunOptions that activate its adapter
AdapterOptions = Callable[[str], ort.RunOptions]


class StageRunner:
    """An onnxruntime session on a stage's `model.onnx`, run on batches of per-request feeds."""

    def __init__(
        self,
        onnx_path: str | Path,
        input_names: Sequence[str],
        output_names: Sequence[str],
        intra_op_threads: int = 0,
        adapter_options: AdapterOptions | None = None,
        resident: Feed | None = None,
    ):
        options = ort.SessionOptions()
        if intra_op_threads > 0:
            options.intra_op_num_threads = intra_op_threads
        # Idle worker threads must not spin: the pipeline's process needs the cores between UNet calls.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # zero-initialised LoRA inputs otherwise warn per input
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.adapter_options = adapter_options
        self.resident = dict(resident or {})

    def _group_key(self, feed: Feed, adapter: str | None) -> tuple:
        return (
            adapter,
            tuple((name, feed[name].shape[1:], feed[name].dtype.str) for name in self.input_names),
        )

    def _run_options(self, adapter: str | None) -> ort.RunOptions | None:
        if adapter is None:
            return None
        if self.adapter_options is None:
            raise ValueError("this stage has no LoRA adapters")
        return self.adapter_options(adapter)

    def _batch(self, feeds: Sequence[Feed]) -> Feed:
        """The group's feeds as one: a lone request's arrays as they are (no copy), else concatenated."""
        if len(feeds) == 1:
            return {name: feeds[0][name] for name in self.input_names}
        return {name: np.concatenate([feed[name] for feed in feeds]) for name in self.input_names}

    def run(
        self, feeds: Sequence[Feed], adapters: Sequence[str | None] | None = None
    ) -> list[dict[str, np.ndarray] | Exception]:
        """Outputs per feed (or the exception its group's run raised), batching compatible feeds."""
        adapters = list(adapters) if adapters is not None else [None] * len(feeds)
        groups: dict[tuple, list[int]] = {}
        for index, (feed, adapter) in enumerate(zip(feeds, adapters, strict=True)):
            groups.setdefault(self._group_key(feed, adapter), []).append(index)
        results: list[dict[str, np.ndarray] | Exception] = [None] * len(feeds)  # type: ignore[list-item]
        for (adapter, _), members in groups.items():
            try:
                batch = self._batch([feeds[i] for i in members])
                outputs = self.session.run(self.output_names, batch | self.resident, self._run_options(adapter))
            except Exception as exc:  # reported per request; the stage keeps serving
                for index in members:
                    results[index] = exc
                continue
            bounds = np.cumsum([len(feeds[i][self.input_names[0]]) for i in members])[:-1]
            pieces = [np.split(output, bounds) for output in outputs]
            for position, index in enumerate(members):
                results[index] = {
                    name: piece[position] for name, piece in zip(self.output_names, pieces, strict=True)
                }
        return results
