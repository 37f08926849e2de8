"""An `Executor` whose stages are other Triton models, so `clif_pipeline` runs THE sampling loop.

Each stage call goes through a `StageCall` (inside Triton: a BLS request, see
`backend_utils.bls_call`), so concurrent pipeline instances' calls meet in the stage models'
dynamic batchers. Tensor names come from the deployment's stage signatures; concept tables are
zero-padded to the deployment's fixed row count; the UNet stage and adapter of each request
come from its LoRA routing. Tensors cross as torch tensors over DLPack, never numpy: on a CUDA
`device` the latents, text states and noise predictions stay on the GPU between stage calls and
the sampling loop's scheduler math runs there too (`Executor.device`); on the host they are shared
with the BLS tensors without a copy. The CUDA path has not been run (no GPU here). A request on an adapter route pins its LoRA set for its whole run
(`pin`: `ConceptStore.pin_lora` in the server), so the stage model can load the set the request
started with even if its pack is removed or replaced meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import numpy as np
import torch

from clif_serve.contract.deployment import Deployment
from clif_serve.contract.routing import LoraRouting
from clif_serve.contract.stages import VAE_DECODER
from clif_serve.errors import InputError
from clif_serve.lora.cache import PinnedCache
from clif_serve.lora.weights import LoraWeights
from clif_serve.runtime.executor import Executor
from clif_serve.runtime.stage_inputs import unet_inputs
from clif_serve.serving.signatures import LORA_ID_INPUT, request_tensors

# (model name, inputs by name, output names, device) -> outputs by name as DLPack capsules. Inputs are
# torch tensors on the executor's device (strings: numpy object arrays); inside Triton: `bls_call`.
StageCall = Callable[[str, Mapping[str, object], tuple[str, ...], str], Mapping[str, object]]


class Pin(Protocol):
    def release(self) -> None: ...


# A LoRA set -> a pin that keeps it loadable by the stage models until released
LoraPinner = Callable[[LoraWeights], Pin]


def pad_concept_table(table: torch.Tensor, rows: int) -> torch.Tensor:
    """Zero-pad `[B, K, H]` to `[B, rows, H]` (the padding rows are never indexed)."""
    if table.shape[1] > rows:
        raise InputError(
            "prompt",
            f"the prompts use {table.shape[1]} distinct concept tokens; this server's export takes at most "
            f"{rows} per prompt (recipe concept_rows)",
        )
    padded = table.new_zeros(table.shape[0], rows, table.shape[2])
    padded[:, : table.shape[1]] = table
    return padded


class TritonExecutor(Executor):
    """Runs the text encoders, UNet and VAE decoder as calls to the repository's stage models."""

    def __init__(
        self,
        deployment: Deployment,
        call: StageCall,
        routing: LoraRouting,
        pin: LoraPinner | None = None,
        device: torch.device = torch.device("cpu"),
    ):
        self.deployment = deployment
        self.device = device
        self.spec = deployment.spec
        self.call = call
        self.routing = routing
        self.pin = pin
        # Counted pins: held exactly while some request uses the set (capacity 0 keeps none unheld).
        self._pins: PinnedCache[Pin] = PinnedCache(0, drop=lambda _set_id, pin: pin.release())

    def _tensor(self, value: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A stage input: contiguous, of the contract's dtype, on the executor's device."""
        return value.detach().to(self.device, dtype).contiguous()

    def _call(self, stage: str, tensors: Mapping[str, object]) -> list[torch.Tensor]:
        outputs = self.deployment.signature(stage).output_names
        result = self.call(stage, tensors, outputs, str(self.device))
        return [torch.from_dlpack(result[name]) for name in outputs]

    def encode_text(self, encoder_index, input_ids, concept_table):
        stage = self.spec.text_encoder_names[encoder_index]
        ids_name, table_name = self.deployment.signature(stage).input_names
        table = pad_concept_table(concept_table.to(torch.float32), self.deployment.served_concept_rows)
        hidden, pooled = self._call(stage, {ids_name: self._tensor(input_ids, torch.int64), table_name: self._tensor(table)})
        return hidden, pooled

    def predict_noise(
        self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None, lora_id=None, regions=None
    ):
        route = self.routing.route(lora_id, regional=regions is not None)
        # The timestep is a per-sample scalar: sent as [B, 1], the stage sees [B] (config reshape).
        values = [sample, timestep.reshape(-1, 1), encoder_hidden_states]
        if self.spec.kind == "sdxl":
            values += [text_embeds, time_ids]
        values = unet_inputs(self.deployment.signature(route.stage), values, regions)
        names = [tensor.name for tensor in request_tensors(self.deployment, route.stage)]
        feed: dict[str, object] = {name: self._tensor(value) for name, value in zip(names, values, strict=True)}
        if route.adapter is not None:
            feed[LORA_ID_INPUT] = np.array([[route.adapter.encode()]] * sample.shape[0], dtype=np.object_)
        (noise,) = self._call(route.stage, feed)
        return noise

    def decode_latents(self, latents):
        (name,) = self.deployment.signature(VAE_DECODER).input_names
        (images,) = self._call(VAE_DECODER, {name: self._tensor(latents)})
        return images

    def acquire_lora(self, lora: LoraWeights | None, regional: bool = False) -> str | None:
        """The request's LoRA set id, once its route is known; an adapter route pins the set until release."""
        lora_id = None if lora is None else lora.set_id
        route = self.routing.route(lora_id, regional=regional)
        if route.adapter is not None and self.pin is not None:
            self._pins.acquire(route.adapter, lambda: self.pin(lora))
        return lora_id

    def release_lora(self, lora_id: str | None, regional: bool = False) -> None:
        """Drop the request's pin of its LoRA set (if it took one)."""
        if lora_id is None or self.pin is None:
            return
        if self.routing.route(lora_id, regional=regional).adapter is not None:
            self._pins.release(lora_id)
