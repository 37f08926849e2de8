"""peft adapters on a PyTorch UNet: a pack's LoRA set as a named adapter, and the traced LoRA inputs.

`LoraWeights.tensors` use peft's key naming without an adapter name (`<module>.lora_A.weight`);
inside a UNet holding an adapter named `name` the parameter is `<module>.lora_A.<name>.weight`.
"""

from __future__ import annotations

import warnings

import torch
from peft import LoraConfig
from peft.utils import set_peft_model_state_dict
from torch import nn

from clif_serve.lora.weights import LoraWeights


def adapter_parameter(key: str, adapter: str) -> str:
    """The parameter name of a peft key inside a model holding adapter `adapter`."""
    return key.replace(".weight", f".{adapter}.weight")


def add_adapter(unet: nn.Module, lora: LoraWeights, adapter: str, device: torch.device, dtype: torch.dtype) -> None:
    """Add `lora` to a diffusers UNet as peft adapter `adapter` (frozen, on the UNet's device and dtype)."""
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=lora.modules)
    with warnings.catch_warnings():
        # peft warns whenever a second adapter joins the first: several are the point here.
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        unet.add_adapter(config, adapter_name=adapter)
    set_peft_model_state_dict(unet, lora.tensors, adapter_name=adapter)
    for name, parameter in unet.named_parameters():
        if f".{adapter}." in name:
            parameter.data = parameter.data.to(device, dtype)
            parameter.requires_grad_(False)
