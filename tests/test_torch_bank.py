"""The PyTorch executor's LoRA bank: each request's set from its slot, equal to the set merged."""

from __future__ import annotations

import torch

from clif_serve.lora.math import merge_lora
from clif_serve.lora.weights import LoraWeights
from clif_serve.runtime.torch_executor import TorchExecutor
from tests.helpers import random_lora


def test_torch_executor_bank_matches_the_merged_unet(tiny_base):
    executor = TorchExecutor(tiny_base, bank_slots=3, bank_rank=4)
    loras = [random_lora(tiny_base, rank=rank, alpha=2.0, seed=90 + rank, modules=5 + rank) for rank in (2, 4)]
    loras = [LoraWeights({k: v / 3 for k, v in lora.tensors.items()}, rank=lora.rank, alpha=lora.alpha) for lora in loras]
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 16, 16, generator=generator)
    timestep = torch.tensor([400.0, 400.0])
    hidden = torch.randn(2, tiny_base.spec.max_length, 32, generator=generator)
    ids = [executor.acquire_lora(lora) for lora in loras]
    assert executor.slots.resident() == ids
    for lora in loras:
        got = executor.predict_noise(sample, timestep, hidden, lora_id=lora.set_id)
        with torch.inference_mode():
            want = merge_lora(tiny_base.unet, lora)(sample, timestep, encoder_hidden_states=hidden, return_dict=False)[0]
            plain = tiny_base.unet(sample, timestep, encoder_hidden_states=hidden, return_dict=False)[0]
        assert (got - want).abs().max() <= 1e-5 and (want - plain).abs().max() > 1e-2
    assert torch.equal(executor.predict_noise(sample, timestep, hidden), plain), "no LoRA: the base UNet itself"
    for lora_id in ids:
        executor.release_lora(lora_id)
    assert not any(".lora" in name for name, _ in tiny_base.unet.named_parameters()), "the base UNet is untouched"
