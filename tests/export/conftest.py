"""Export fixtures: each tiny model is exported once per test session (the CLI for `tiny`).

`tiny` has the plain UNet and unet_lora; `tiny-xl` also has a LoRA merged into its UNet.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.helpers import random_lora, random_pack


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """`clif-serve export --model tiny` (recipe tiny: plain UNet + unet_lora), through the CLI."""
    from clif_serve.cli import main
    from clif_serve.export.layout import open_export

    out = tmp_path_factory.mktemp("exports") / "tiny"
    assert main(["export", "--model", "tiny", "--out", str(out)]) == 0
    return open_export(out)


@pytest.fixture(scope="session")
def xl_packs(tiny_xl_base):
    """Concept packs for `tiny-xl`: joe (embeddings only), ann (LoRA A, merged below), bob (LoRA B)."""
    return {
        "joe": random_pack(tiny_xl_base, "joe", "dog", seed=1),
        "ann": replace(
            random_pack(tiny_xl_base, "ann", "cat", seed=2), lora=random_lora(tiny_xl_base, seed=21)
        ),
        "bob": replace(
            random_pack(tiny_xl_base, "bob", "dog", seed=3),
            lora=random_lora(tiny_xl_base, rank=2, seed=22, modules=20),
        ),
    }


@pytest.fixture(scope="session")
def tiny_xl_export(tmp_path_factory, tiny_xl_base, xl_packs):
    """tiny-xl (recipe tiny-xl) with ann's LoRA merged into `unet`: the base model runs on unet_lora
    without an adapter, other LoRA sets on unet_lora with one. Through the library call."""
    from clif_serve.export.exporter import export_model

    out = tmp_path_factory.mktemp("exports") / "tiny-xl"
    return export_model(tiny_xl_base, out, recipe="tiny-xl", merge_lora=xl_packs["ann"])


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
