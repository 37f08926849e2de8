"""PyTorch executor: the base model's own modules with concept-table injection and peft LoRA.

The tokenizer and the embedding matrix are never touched per request: concept tokens reach the
text encoder through the concept table (`ConceptTextEncoder`). LoRA sets are added to the UNet
as named peft adapters once and switched per call; beyond `adapter_capacity` the least recently
used adapter that no request holds is deleted from the UNet. The adapters live in the UNet, so
every executor on one UNet shares one adapter cache and one lock (`_UnetState`). The UNet's
attention modules get the regional processors (`clif_serve.models.regional_attention`), which run
diffusers' own attention unchanged unless a call carries regions.

With `bank_slots` (CPU only) LoRA sets run from a LoRA bank instead (`clif_serve.lora.bank`): a
banked copy of the UNet that shares the base weights (and its regional processors), its bank
buffers viewing a `LoraBank`'s arrays, slots held per request by a `SlotTable`; the slot index is
passed per call (`torch.func.functional_call`), so calls need no adapter switching.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from clif_serve.lora.bank import LoraBank, slot_buffers, with_bank
from clif_serve.lora.cache import DEFAULT_WAIT_SECONDS, PinnedCache
from clif_serve.lora.peft import add_adapter
from clif_serve.lora.slots import SlotTable
from clif_serve.lora.weights import LoraWeights
from clif_serve.models import regional_attention
from clif_serve.models.concept_text_encoder import ConceptTextEncoder
from clif_serve.models.loading import BaseModel
from clif_serve.runtime.executor import Executor


@dataclass
class _UnetState:
    """The lock that serialises a UNet's calls (adapter selection is UNet state) and its adapter cache."""

    lock: threading.RLock
    adapters: PinnedCache[str]


_UNET_STATES: weakref.WeakKeyDictionary[nn.Module, _UnetState] = weakref.WeakKeyDictionary()
_UNET_STATES_GUARD = threading.Lock()


def _unet_state(unet: nn.Module, capacity: int) -> _UnetState:
    with _UNET_STATES_GUARD:
        state = _UNET_STATES.get(unet)
        if state is None:
            state = _UnetState(threading.RLock(), PinnedCache(capacity, drop=lambda lora_id, _: unet.delete_adapters(lora_id)))
            _UNET_STATES[unet] = state
        return state


class TorchExecutor(Executor):
    """Runs a loaded `BaseModel` eagerly in PyTorch (CPU or CUDA)."""

    def __init__(
        self,
        base: BaseModel,
        adapter_capacity: int = 16,
        bank_slots: int = 0,
        bank_rank: int = 16,
        bank_wait_seconds: float = DEFAULT_WAIT_SECONDS,
    ):
        self.base = base
        self.spec = base.spec
        self.device = base.unet.device
        self.dtype = base.unet.dtype
        self.text_encoders = [
            ConceptTextEncoder(module, spec) for module, spec in zip(base.text_encoders, base.spec.text_encoders, strict=True)
        ]
        state = _unet_state(base.unet, adapter_capacity)
        self._unet_lock, self._adapters = state.lock, state.adapters
        regional_attention.install(base.unet)
        self._levels = regional_attention.unet_levels(base.unet)
        self.slots = None
        if bank_slots:
            if self.device.type != "cpu" or self.dtype != torch.float32:
                raise ValueError("the PyTorch executor's LoRA bank runs on CPU in float32 only")
            bank = LoraBank(self.spec, bank_slots, bank_rank)
            self.slots = SlotTable(bank, bank_wait_seconds)
            self._banked = with_bank(base.unet, self.spec, bank_slots, bank_rank, share_weights=True)
            for name, tensor in bank.tensors().items():
                module, _, buffer = name.rpartition(".")
                self._banked.get_submodule(module).register_buffer(buffer, tensor)

    def _to_device(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None:
            return None
        return tensor.to(self.device, self.dtype if tensor.is_floating_point() else tensor.dtype)

    @torch.inference_mode()
    def encode_text(self, encoder_index, input_ids, concept_table):
        return self.text_encoders[encoder_index](input_ids.to(self.device), self._to_device(concept_table))

    @torch.inference_mode()
    def predict_noise(
        self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None, lora_id=None, regions=None
    ):
        added = None
        if self.spec.kind == "sdxl":
            added = {"text_embeds": self._to_device(text_embeds), "time_ids": self._to_device(time_ids)}
        args = (self._to_device(sample), self._to_device(timestep))
        kwargs = {
            "encoder_hidden_states": self._to_device(encoder_hidden_states),
            "added_cond_kwargs": added,
            "return_dict": False,
        }
        if regions is not None:
            hidden, masks = self._to_device(regions.hidden), self._to_device(regions.masks)
            kwargs["cross_attention_kwargs"] = regional_attention.region_kwargs(hidden, masks, self._levels)
        if self.slots is not None and lora_id is not None:
            slot = torch.full((args[0].shape[0],), self.slots.slot_of(lora_id), dtype=torch.int64)
            slots = dict.fromkeys(slot_buffers(self.spec), slot)
            return torch.func.functional_call(self._banked, slots, args, kwargs, strict=False)[0]
        with self._unet_lock:
            self._select_adapter(lora_id)
            return self.base.unet(*args, **kwargs)[0]

    @torch.inference_mode()
    def decode_latents(self, latents):
        return self.base.vae.decode(self._to_device(latents), return_dict=False)[0]

    def acquire_lora(self, lora: LoraWeights | None, regional: bool = False) -> str | None:
        """Add the set as a peft adapter of the UNet (once; validated then) and hold it for the request;
        with a bank, hold its bank slot (filled on first use) instead."""
        if lora is None:
            return None
        if self.slots is not None:
            self.slots.acquire(lora)
            return lora.set_id

        def build() -> str:
            lora.validate()
            lora.validate_against(self.spec.lora_targets)
            add_adapter(self.base.unet, lora, lora.set_id, self.device, self.dtype)
            return lora.set_id

        with self._unet_lock:
            return self._adapters.acquire(lora.set_id, build)

    def release_lora(self, lora_id: str | None, regional: bool = False) -> None:
        if lora_id is not None and self.slots is not None:
            self.slots.release(lora_id)
        elif lora_id is not None:
            with self._unet_lock:
                self._adapters.release(lora_id)

    def _select_adapter(self, lora_id: str | None) -> None:
        if not self._adapters.keys():
            return
        if lora_id is None:
            self.base.unet.disable_adapters()
            return
        if lora_id not in self._adapters.keys():
            raise KeyError(f"LoRA {lora_id} is not held by this request (acquire_lora first)")
        self.base.unet.enable_adapters()
        self.base.unet.set_adapter(lora_id)
