"""ONNX Runtime executor over an export folder (see `clif_serve.export.layout`).

Sessions are created once, in the constructor. The UNet runs from the plain `unet` stage, except
for a LoRA set other than the one merged into it: such sets run on `unet_lora` with the set as an
onnxruntime adapter (`RunOptions.add_active_adapter`).

Runs are plain `InferenceSession.run` calls by default. IOBinding (binding the torch tensors'
memory) is a setting: on CPU it was not faster end to end (benchmarks/pipeline_speed.py, tiny,
20 steps: 790 ms bound vs 774 ms plain with one thread; 811 vs 605 ms with two on a busy
machine), and adapters do not apply to IOBinding runs, so adapter runs always use `run`. Idle
threads do not spin by default: with spinning, the same two-thread run took 1305 ms instead of
605 ms, the spinning threads taking the cores from the scheduler step and other processes.
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from clif_serve.concepts.lora import LoraWeights
from clif_serve.errors import InputError
from clif_serve.export import layout
from clif_serve.export.adapters import write_adapter
from clif_serve.runtime.executor import Executor


@dataclass(frozen=True)
class OrtSettings:
    """Session settings. Thread counts of 0 leave the choice to onnxruntime (one per physical core).

    `inter_op_threads` only matter with `parallel` (independent graph nodes run concurrently);
    `spin` lets idle intra-op threads busy-wait for the next run (onnxruntime's own default), which
    takes CPU from whatever runs between two calls (the scheduler step, other processes).
    """

    intra_op_threads: int = 0
    inter_op_threads: int = 0
    parallel: bool = False
    spin: bool = False
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    io_binding: bool = False

    def session_options(self) -> ort.SessionOptions:
        """SessionOptions with these settings, full graph optimisation and error-only logging."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = self.inter_op_threads
        options.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if self.parallel else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin else "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "1" if self.spin else "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        return options


class OrtExecutor(Executor):
    """Runs an export folder's ONNX stages with onnxruntime; tensors cross as CPU torch tensors."""

    def __init__(self, export: str | Path | layout.ExportFolder, settings: OrtSettings = OrtSettings()):
        self.folder = export if isinstance(export, layout.ExportFolder) else layout.open_export(export)
        self.spec = self.folder.spec
        self.settings = settings
        options = settings.session_options()

        def session(stage: str) -> ort.InferenceSession:
            return ort.InferenceSession(
                str(self.folder.onnx_path(stage)), options, providers=list(settings.providers)
            )

        stages = [*self.spec.text_encoder_names, layout.UNET_STAGE, layout.VAE_DECODER_STAGE]
        stages += [layout.UNET_LORA_STAGE] if self.folder.has_stage(layout.UNET_LORA_STAGE) else []
        self._sessions = {stage: session(stage) for stage in stages}
        self._text_encoders = [self._sessions[name] for name in self.spec.text_encoder_names]
        self._unet = self._sessions[layout.UNET_STAGE]
        self._unet_lora = self._sessions.get(layout.UNET_LORA_STAGE)
        self._vae_decoder = self._sessions[layout.VAE_DECODER_STAGE]
        self._unet_inputs = layout.unet_inputs(self.spec)
        self._merged = self.folder.merged_lora
        self._adapters: dict[str, tuple[ort.LoraAdapter, ort.RunOptions]] = {}
        self._lock = threading.Lock()

    def session(self, stage: str) -> ort.InferenceSession:
        """The onnxruntime session of one stage (e.g. to read its options or inputs)."""
        return self._sessions[stage]

    def _run(
        self,
        session: ort.InferenceSession,
        names: tuple[str, ...],
        tensors: tuple[torch.Tensor, ...],
        outputs: tuple[str, ...],
        run_options: ort.RunOptions | None = None,
    ) -> list[torch.Tensor]:
        arrays = [t.detach().to("cpu").contiguous() for t in tensors]
        arrays = [t if t.dtype == torch.int64 else t.to(torch.float32) for t in arrays]
        if run_options is not None or not self.settings.io_binding:
            feed = {name: t.numpy() for name, t in zip(names, arrays, strict=True)}
            return [torch.from_numpy(out) for out in session.run(list(outputs), feed, run_options)]
        binding = session.io_binding()
        for name, tensor in zip(names, arrays, strict=True):
            dtype = np.int64 if tensor.dtype == torch.int64 else np.float32
            binding.bind_input(name, "cpu", 0, dtype, list(tensor.shape), tensor.data_ptr())
        for name in outputs:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        return [torch.from_numpy(value.numpy()) for value in binding.get_outputs()]

    def encode_text(self, encoder_index, input_ids, concept_table):
        hidden, pooled = self._run(
            self._text_encoders[encoder_index],
            layout.TEXT_ENCODER_INPUTS,
            (input_ids.to(torch.int64), concept_table),
            layout.TEXT_ENCODER_OUTPUTS,
        )
        return hidden, pooled

    def _unet_for(self, lora_id: str | None) -> tuple[ort.InferenceSession, ort.RunOptions | None]:
        if lora_id == self._merged:
            return self._unet, None
        if lora_id is None:
            if self._unet_lora is None:
                raise InputError(
                    "lora_id", f"this export has LoRA {self._merged} merged and no unet_lora stage"
                )
            return self._unet_lora, None
        with self._lock:
            entry = self._adapters.get(lora_id)
        if entry is None:
            raise KeyError(f"LoRA {lora_id} is not loaded in this executor")
        return self._unet_lora, entry[1]

    def predict_noise(
        self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None, lora_id=None
    ):
        session, run_options = self._unet_for(lora_id)
        inputs = (sample, timestep, encoder_hidden_states)
        if self.spec.kind == "sdxl":
            inputs += (text_embeds, time_ids)
        return self._run(session, self._unet_inputs, inputs, layout.UNET_OUTPUTS, run_options)[0]

    def decode_latents(self, latents):
        return self._run(
            self._vae_decoder, layout.VAE_DECODER_INPUTS, (latents,), layout.VAE_DECODER_OUTPUTS
        )[0]

    def load_lora(self, lora: LoraWeights) -> str:
        """Make `lora` runnable: the merged set needs nothing, others become `unet_lora` adapters."""
        if lora.set_id == self._merged:
            return lora.set_id
        if self._unet_lora is None:
            raise InputError(
                "lora",
                f"LoRA set {lora.set_id} needs the unet_lora stage; export with a recipe listing 'lora'",
            )
        with self._lock:
            if lora.set_id in self._adapters:
                return lora.set_id  # validated when it was first loaded: nothing more on the request path
        lora.validate()
        lora.validate_against(self.spec.lora_targets)
        adapter = ort.LoraAdapter()
        # onnxruntime loads adapters from files only; it reads the file whole, so it can go at once.
        handle, name = tempfile.mkstemp(suffix=".onnx_adapter")
        os.close(handle)
        try:
            adapter.Load(str(write_adapter(lora, self.spec, Path(name))))
        finally:
            os.unlink(name)
        run_options = ort.RunOptions()
        run_options.add_active_adapter(adapter)
        with self._lock:
            self._adapters.setdefault(lora.set_id, (adapter, run_options))
        return lora.set_id

    def unload_lora(self, lora_id: str) -> None:
        with self._lock:
            self._adapters.pop(lora_id, None)

    def loaded_loras(self) -> list[str]:
        """Ids of the adapters loaded now (the merged set, if any, is always available)."""
        with self._lock:
            return sorted(self._adapters)
