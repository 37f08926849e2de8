"""ONNX Runtime executor over an export folder (see `clif_serve.contract.folder`).

Sessions are created once, in the constructor. Which UNet stage a request runs on, and with which
adapter, is the deployment's LoRA routing (`clif_serve.contract.routing`, with adapters): the
merged set (or none, when nothing is merged) on `unet`, other sets on `unet_lora` with the set as
an onnxruntime adapter (`RunOptions.add_active_adapter`). Adapters are cached per set (the least
recently used one that no request holds is dropped beyond `OrtSettings.adapter_capacity`).
An export with `unet_bank` runs every other set there instead: the set goes into a slot of the
executor's LoRA bank when a request first needs it (`SlotTable`: pinned until the request ends,
waiting up to `OrtSettings.bank_wait_seconds` for a free slot), the bank stays resident as
OrtValues (`ResidentBank`: a fill writes them in place), and each call feeds the slot index.

Runs are plain `InferenceSession.run` calls by default. IOBinding (binding the torch tensors'
memory) is a setting: on CPU it was not faster end to end (benchmarks/pipeline_speed.py, tiny,
20 steps: 790 ms bound vs 774 ms plain with one thread; 811 vs 605 ms with two on a busy
machine), and adapters do not apply to IOBinding runs, so adapter runs always use `run`. Worker
threads spin during a run and stop when it returns (`OrtSettings.spinning`, `contract/ort_settings.py`):
spinning on after a run took the cores from the scheduler step (1305 ms instead of 605 ms for a
two-thread run), sleeping between operators made every operator wait for a wake-up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from clif_serve.contract.folder import ExportFolder, open_export
from clif_serve.contract.ort_settings import OrtSettings
from clif_serve.contract.stages import UNET_BANK, VAE_DECODER
from clif_serve.lora.cache import PinnedCache
from clif_serve.lora.onnx import ActiveAdapter, load_adapter
from clif_serve.lora.slots import SlotTable
from clif_serve.lora.weights import LoraWeights
from clif_serve.runtime.executor import Executor
from clif_serve.runtime.ort_device import OrtDevice
from clif_serve.runtime.resident_bank import ResidentBank
from clif_serve.runtime.stage_inputs import unet_inputs


class OrtExecutor(Executor):
    """Runs an export folder's ONNX stages with onnxruntime; tensors cross as CPU torch tensors."""

    def __init__(self, export: str | Path | ExportFolder, settings: OrtSettings = OrtSettings()):
        self.folder = export if isinstance(export, ExportFolder) else open_export(export)
        self.deployment = self.folder.deployment
        self.spec = self.deployment.spec
        self.settings = settings
        self.routing = self.deployment.routing(adapters=True)
        options = settings.session_options()
        self._sessions = {
            stage: ort.InferenceSession(str(self.folder.onnx_path(stage)), options, providers=list(settings.providers))
            for stage in self.deployment.stages
        }
        self._signatures = {stage: self.deployment.signature(stage) for stage in self.deployment.stages}
        self._adapters: PinnedCache[ActiveAdapter] = PinnedCache(settings.adapter_capacity)
        self.slots = None
        if self.deployment.has_unet_bank:
            # OrtValues resident between calls; fills write into them (the served stage's bank too).
            self._bank = ResidentBank(self.spec, self.deployment.bank_slots, self.deployment.bank_rank)
            self.slots = SlotTable(self._bank.bank, settings.bank_wait_seconds)

    def session(self, stage: str) -> ort.InferenceSession:
        """The onnxruntime session of one stage (e.g. to read its options or inputs)."""
        return self._sessions[stage]

    def _run(
        self, stage: str, tensors: tuple[torch.Tensor, ...], run_options: ort.RunOptions | None = None
    ) -> list[torch.Tensor]:
        signature = self._signatures[stage]
        session = self._sessions[stage]
        arrays = [t.detach().to("cpu").contiguous() for t in tensors]
        arrays = [t if t.dtype == torch.int64 else t.to(torch.float32) for t in arrays]
        outputs = list(signature.output_names)
        if run_options is not None or not self.settings.io_binding:
            feed = {name: t.numpy() for name, t in zip(signature.input_names, arrays, strict=True)}
            return [torch.from_numpy(out) for out in session.run(outputs, feed, run_options)]
        binding = session.io_binding()
        host = OrtDevice()
        for name, tensor in zip(signature.input_names, arrays, strict=True):
            host.bind_input(binding, name, tensor)
        for name in outputs:
            host.bind_output(binding, name)
        session.run_with_iobinding(binding)
        return [torch.from_numpy(value.numpy()) for value in binding.get_outputs()]

    def _run_bank(self, tensors: tuple[torch.Tensor, ...], slot: int) -> torch.Tensor:
        """`unet_bank` on the request's tensors, every sample in `slot`, with the resident bank."""
        signature = self._signatures[UNET_BANK]
        arrays = [t.detach().to("cpu", torch.float32).contiguous().numpy() for t in tensors]
        arrays.append(np.full(len(arrays[0]), slot, np.int64))
        feed = {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in zip(signature.input_names, arrays, strict=True)}
        outputs = self._sessions[UNET_BANK].run_with_ort_values(list(signature.output_names), feed | self._bank.values)
        return torch.from_numpy(outputs[0].numpy())

    def encode_text(self, encoder_index, input_ids, concept_table):
        hidden, pooled = self._run(self.spec.text_encoder_names[encoder_index], (input_ids.to(torch.int64), concept_table))
        return hidden, pooled

    def predict_noise(
        self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None, lora_id=None, regions=None
    ):
        route = self.routing.route(lora_id, regional=regions is not None)
        inputs = (sample, timestep, encoder_hidden_states)
        if self.spec.kind == "sdxl":
            inputs += (text_embeds, time_ids)
        if route.stage == UNET_BANK:
            return self._run_bank(inputs, 0 if route.adapter is None else self.slots.slot_of(route.adapter))
        options = self._adapters.pinned(route.adapter).run_options if route.adapter is not None else None
        return self._run(route.stage, unet_inputs(self._signatures[route.stage], inputs, regions), options)[0]

    def decode_latents(self, latents):
        return self._run(VAE_DECODER, (latents,))[0]

    def acquire_lora(self, lora: LoraWeights | None, regional: bool = False) -> str | None:
        """Route the request's LoRA set; hold its bank slot (filled on first use) or its adapter (built once)."""
        lora_id = None if lora is None else lora.set_id
        route = self.routing.route(lora_id, regional=regional)
        if route.adapter is None:
            return lora_id
        if route.stage == UNET_BANK:
            self.slots.acquire(lora)  # waits while every slot is held by requests in flight
            return lora_id
        # Validated when its adapter is first built: nothing more on the request path.
        self._adapters.acquire(lora_id, lambda: load_adapter(lora, self.spec))
        return lora_id

    def release_lora(self, lora_id: str | None, regional: bool = False) -> None:
        if lora_id is None:
            return
        route = self.routing.route(lora_id, regional=regional)
        if route.adapter is None:
            return
        if route.stage == UNET_BANK:
            self.slots.release(lora_id)
        else:
            self._adapters.release(lora_id)

    def cached_adapters(self) -> list[str]:
        """Ids of the adapters built now, least recently used first (the merged set needs none)."""
        return self._adapters.keys()
