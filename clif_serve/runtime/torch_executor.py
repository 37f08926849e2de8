"""PyTorch executor: the base model's own modules with concept-table injection and peft LoRA.

The tokenizer and the embedding matrix are never touched per request: concept tokens reach the
text encoder through the concept table (`ConceptTextEncoder`). LoRA sets are added to the UNet
as named peft adapters once and switched per call.
"""

from __future__ import annotations

import threading
import warnings

import torch
from peft import LoraConfig
from peft.utils import set_peft_model_state_dict

from clif_serve.concepts.lora import LoraWeights
from clif_serve.models.concept_text_encoder import ConceptTextEncoder
from clif_serve.models.loading import BaseModel
from clif_serve.runtime.executor import Executor


class TorchExecutor(Executor):
    """Runs a loaded `BaseModel` eagerly in PyTorch (CPU or CUDA)."""

    def __init__(self, base: BaseModel):
        self.base = base
        self.spec = base.spec
        self.device = base.unet.device
        self.dtype = base.unet.dtype
        self.text_encoders = [
            ConceptTextEncoder(module, spec) for module, spec in zip(base.text_encoders, base.spec.text_encoders, strict=True)
        ]
        self._adapters: set[str] = set()
        self._unet_lock = threading.Lock()

    def _to_device(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None:
            return None
        return tensor.to(self.device, self.dtype if tensor.is_floating_point() else tensor.dtype)

    @torch.inference_mode()
    def encode_text(self, encoder_index, input_ids, concept_table):
        return self.text_encoders[encoder_index](input_ids.to(self.device), self._to_device(concept_table))

    @torch.inference_mode()
    def predict_noise(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None, lora_id=None):
        added = None
        if self.spec.kind == "sdxl":
            added = {"text_embeds": self._to_device(text_embeds), "time_ids": self._to_device(time_ids)}
        with self._unet_lock:
            self._select_adapter(lora_id)
            return self.base.unet(
                self._to_device(sample),
                self._to_device(timestep),
                encoder_hidden_states=self._to_device(encoder_hidden_states),
                added_cond_kwargs=added,
                return_dict=False,
            )[0]

    @torch.inference_mode()
    def decode_latents(self, latents):
        return self.base.vae.decode(self._to_device(latents), return_dict=False)[0]

    def load_lora(self, lora: LoraWeights) -> str:
        adapter = lora.set_id
        with self._unet_lock:
            if adapter not in self._adapters:  # validated once, when first loaded
                lora.validate_against(self.spec.lora_targets)
                config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=lora.modules)
                with warnings.catch_warnings():
                    # peft warns whenever a second adapter joins the first: several are the point here.
                    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                    self.base.unet.add_adapter(config, adapter_name=adapter)
                set_peft_model_state_dict(self.base.unet, lora.tensors, adapter_name=adapter)
                for name, parameter in self.base.unet.named_parameters():
                    if f".{adapter}." in name:
                        parameter.data = parameter.data.to(self.device, self.dtype)
                        parameter.requires_grad_(False)
                self._adapters.add(adapter)
        return adapter

    def unload_lora(self, lora_id: str) -> None:
        with self._unet_lock:
            if lora_id in self._adapters:
                self.base.unet.delete_adapters(lora_id)
                self._adapters.discard(lora_id)

    def _select_adapter(self, lora_id: str | None) -> None:
        if not self._adapters:
            return
        if lora_id is None:
            self.base.unet.disable_adapters()
            return
        if lora_id not in self._adapters:
            raise KeyError(f"LoRA {lora_id} is not loaded in this executor")
        self.base.unet.enable_adapters()
        self.base.unet.set_adapter(lora_id)
