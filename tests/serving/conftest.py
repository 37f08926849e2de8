"""Fixtures of the serving tests: one tiny export per session, packs, and raw pack bytes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import save as save_safetensors

from clif_serve.concepts.pack import EMBEDDING_PREFIX, LORA_PREFIX
from tests.helpers import random_lora, random_pack


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """The `tiny` model exported with its recipe (unet_lora included) — read-only."""
    from clif_serve.export.exporter import export_model

    return export_model("tiny", tmp_path_factory.mktemp("serving-export") / "tiny", recipe="tiny")


@pytest.fixture(scope="session")
def packs(tiny_base):
    """Embedding-only packs joe, rex, kim, max and ann_lora (a pack with a UNet LoRA)."""
    made = {
        name: random_pack(tiny_base, name, seed=seed)
        for seed, name in enumerate(("joe", "rex", "kim", "max"))
    }
    made["ann_lora"] = replace(
        random_pack(tiny_base, "ann_lora", seed=9), lora=random_lora(tiny_base, seed=3)
    )
    return made


def raw_pack_bytes(pack, embeddings=None, metadata=None) -> bytes:
    """A pack's safetensors bytes WITHOUT validation, so broken packs can be sent to a server."""
    tensors = {EMBEDDING_PREFIX + k: v.contiguous() for k, v in (embeddings or pack.embeddings).items()}
    if pack.lora is not None:
        tensors.update({LORA_PREFIX + k: v.contiguous() for k, v in pack.lora.tensors.items()})
    return save_safetensors(tensors, metadata={**pack.manifest(), **(metadata or {})})


def with_value(pack, value: float) -> dict[str, torch.Tensor]:
    """The pack's embeddings with one entry set to `value` (NaN, Inf)."""
    embeddings = {k: v.clone() for k, v in pack.embeddings.items()}
    next(iter(embeddings.values()))[0, 0] = value
    return embeddings
