"""What benchmarks compare against and generate with: stand-in concepts and diffusers' own pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from diffusers import DiffusionPipeline

from clif_serve.concepts.create import new_pack
from clif_serve.concepts.pack import ConceptPack
from clif_serve.concepts.textual_inversion import load_into_diffusers
from clif_serve.lora.weights import LoraWeights
from clif_serve.models.loading import BaseModel


def stand_in_packs(base: BaseModel, names_and_words: Sequence[tuple[str, str]], seed: int = 0) -> list[ConceptPack]:
    """Packs whose tokens are class-word embeddings moved by seeded noise (stand-ins for trained ones)."""
    packs = []
    for offset, (name, word) in enumerate(names_and_words):
        pack = new_pack(base, name, word, 2)
        generator = torch.Generator().manual_seed(seed + offset)
        moved = {k: v + 0.5 * torch.randn(v.shape, generator=generator) for k, v in pack.embeddings.items()}
        packs.append(replace(pack, embeddings=moved))
    return packs


def stand_in_lora(base: BaseModel, seed: int, rank: int = 4, scale: float = 0.3) -> LoraWeights:
    """A LoRA set with seeded random A and B (times `scale`) on every attention projection of the base
    UNet: a stand-in for a trained joint LoRA (each seed is another set)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, (in_features, out_features) in sorted(base.spec.lora_targets.items()):
        tensors[f"{module}.lora_A.weight"] = scale * torch.randn(rank, in_features, generator=generator)
        tensors[f"{module}.lora_B.weight"] = scale * torch.randn(out_features, rank, generator=generator)
    return LoraWeights(tensors, rank=rank, alpha=float(rank))


def diffusers_pipeline(base: BaseModel, packs: Sequence[ConceptPack]) -> DiffusionPipeline:
    """diffusers' eager pipeline for the same folder, with the packs' tokens loaded by `load_textual_inversion`."""
    pipe = DiffusionPipeline.from_pretrained(base.path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    for pack in packs:
        load_into_diffusers(pipe, pack)
    return pipe
