"""One ONNX stage run with onnxruntime over a dynamic batch of Triton requests.

All requests of a batch whose tensors agree in shape (past the batch dimension) and in LoRA
adapter are concatenated along the batch dimension, run as ONE onnxruntime call, and the outputs
are split back per request. Requests naming different concepts batch together, because concepts
travel as per-sample concept tables; requests of different LoRA adapters never share a run (the
LoRA bank of `unet_bank` exists for that: its slot index is one more per-sample input, and the bank
itself is `resident`, the same OrtValues bound to every run).

On CUDA, runs go through IOBinding on the session's device (`OrtDevice`): inputs are bound from
their memory (torch tensors by device pointer) and outputs are allocated by onnxruntime on the same
device and handed back over DLPack, so no tensor crosses to the host. On the host, runs follow
`OrtSettings.io_binding` like the in-process executor (default: plain `run`, which was ~0.5 ms per
tiny UNet call faster than binding on a 2-core Intel Xeon, docs/performance.md section 1c); a stage
with a resident LoRA bank always binds it. Adapter runs always use `run` with host arrays:
onnxruntime applies LoRA adapters to `run` only, not to IOBinding runs. The CUDA side has not been
run (no GPU here).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from clif_serve.contract.ort_settings import OrtSettings
from clif_serve.runtime.ort_device import OrtDevice

# name -> array (numpy on the host, torch on CUDA: `OrtDevice.asarray`)
Feed = Mapping[str, object]
# LoRA set id -> the RunOptions that activate its adapter
AdapterOptions = Callable[[str], ort.RunOptions]


class StageRunner:
    """An onnxruntime session on a stage's `model.onnx`, run on batches of per-request feeds."""

    def __init__(
        self,
        onnx_path: str | Path,
        input_names: Sequence[str],
        output_names: Sequence[str],
        settings: OrtSettings = OrtSettings(),
        adapter_options: AdapterOptions | None = None,
        resident: Mapping[str, ort.OrtValue] | None = None,
        device: OrtDevice = OrtDevice(),
    ):
        self.device = device
        # The in-process executor's session settings (threads, spinning): same graph, same thread pool.
        self.session = ort.InferenceSession(str(onnx_path), settings.session_options(), providers=device.providers)
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.adapter_options = adapter_options
        self.resident = dict(resident or {})
        self.binds = device.is_cuda or settings.io_binding or bool(self.resident)

    def _group_key(self, feed: Feed, adapter: str | None) -> tuple:
        return (
            adapter,
            # numpy and torch dtypes are hashable as they are (their names are slow to build)
            tuple((name, tuple(feed[name].shape[1:]), feed[name].dtype) for name in self.input_names),
        )

    def _batch(self, feeds: Sequence[Feed]) -> dict:
        """The group's feeds as one: a lone request's arrays as they are (no copy), else concatenated."""
        if len(feeds) == 1:
            return {name: feeds[0][name] for name in self.input_names}
        return {name: self.device.concatenate([feed[name] for feed in feeds]) for name in self.input_names}

    def _host_run(self, batch: dict, adapter: str | None) -> list:
        """`run` on host arrays, with the LoRA `adapter` active if one is named (adapters do not apply to
        IOBinding runs)."""
        if adapter is not None and self.adapter_options is None:
            raise ValueError("this stage has no LoRA adapters")
        host = {name: self.device.to_host(array) for name, array in batch.items()}
        options = self.adapter_options(adapter) if adapter is not None else None
        outputs = self.session.run(self.output_names, host, options)
        return [self.device.asarray(output) for output in outputs]

    def _bound_run(self, batch: dict) -> list:
        """A run with every input bound from this device's memory and the outputs left there."""
        binding = self.session.io_binding()
        for name, array in batch.items():
            self.device.bind_input(binding, name, array)
        for name, value in self.resident.items():
            binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            self.device.bind_output(binding, name)
        self.device.synchronize()
        self.session.run_with_iobinding(binding)
        return [self.device.from_ort(value) for value in binding.get_outputs()]

    def run(self, feeds: Sequence[Feed], adapters: Sequence[str | None] | None = None) -> list[dict | Exception]:
        """Outputs per feed (or the exception its group's run raised), batching compatible feeds."""
        adapters = list(adapters) if adapters is not None else [None] * len(feeds)
        groups: dict[tuple, list[int]] = {}
        for index, (feed, adapter) in enumerate(zip(feeds, adapters, strict=True)):
            groups.setdefault(self._group_key(feed, adapter), []).append(index)
        results: list[dict | Exception] = [None] * len(feeds)  # type: ignore[list-item]
        for (adapter, _), members in groups.items():
            try:
                batch = self._batch([feeds[i] for i in members])
                outputs = self._bound_run(batch) if adapter is None and self.binds else self._host_run(batch, adapter)
            except Exception as exc:  # reported per request; the stage keeps serving
                for index in members:
                    results[index] = exc
                continue
            ends = np.cumsum([len(feeds[i][self.input_names[0]]) for i in members])
            for position, index in enumerate(members):
                start, end = (ends[position - 1] if position else 0), ends[position]
                results[index] = {name: output[start:end] for name, output in zip(self.output_names, outputs, strict=True)}
        return results
