"""Export fixtures: LoRA packs for `tiny` (the tiny and tiny-xl exports are in tests/conftest.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.helpers import random_lora, random_pack


@pytest.fixture(scope="session")
def lora_packs(tiny_base):
    """Concept packs for `tiny`: joe (embeddings only), ann (LoRA A) and rex (LoRA B, fewer modules)."""
    lora_a = random_lora(tiny_base, rank=4, alpha=4.0, seed=11)
    lora_b = random_lora(tiny_base, rank=2, alpha=2.0, seed=12, modules=12)
    return {
        "joe": random_pack(tiny_base, "joe", "dog", seed=1),
        "ann": replace(random_pack(tiny_base, "ann", "cat", seed=2), lora=lora_a),
        "rex": replace(random_pack(tiny_base, "rex", "dog", seed=3), lora=lora_b),
    }
