"""Test helpers: random but valid concept packs and LoRA weights."""

from __future__ import annotations

from dataclasses import replace

import torch


def random_pack(base, name: str, class_word: str = "dog", seed: int = 0, num_tokens: int = 2):
    """A valid pack for `base` whose embeddings are random (so it visibly differs from the class word)."""
    from clif_serve.concepts.create import new_pack

    pack = new_pack(base, name, class_word, num_tokens)
    generator = torch.Generator().manual_seed(seed)
    embeddings = {k: torch.randn(v.shape, generator=generator) for k, v in pack.embeddings.items()}
    return replace(pack, embeddings=embeddings)


def random_lora(base, rank: int = 4, alpha: float = 4.0, seed: int = 0, modules: int | None = None):
    """LoRA weights with non-zero A and B for the base UNet's attention projections."""
    from clif_serve.concepts.lora import LoraWeights

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, (in_features, out_features) in sorted(base.spec.lora_targets.items())[:modules]:
        tensors[f"{module}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator) * 0.3
        tensors[f"{module}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator) * 0.3
    return LoraWeights(tensors, rank=rank, alpha=alpha)
