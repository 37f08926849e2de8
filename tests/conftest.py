"""Shared fixtures: a private model cache per test session, the embedded tiny models, and the scorers'
folders and photos of `clif-serve eval`."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import random_lora, random_pack

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Build the embedded models into a fresh cache, so the suite also exercises the build path."""
    previous = os.environ.get("CLIF_SERVE_CACHE")
    os.environ["CLIF_SERVE_CACHE"] = str(tmp_path_factory.mktemp("clif-serve-cache"))
    yield
    if previous is None:
        os.environ.pop("CLIF_SERVE_CACHE", None)
    else:
        os.environ["CLIF_SERVE_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_base():
    """The `tiny` (SD1.5-shaped) base model. Read-only: do not add adapters or change weights."""
    from clif_serve.models.loading import load_base_model

    return load_base_model("tiny")


@pytest.fixture(scope="session")
def tiny_xl_base():
    """The `tiny-xl` (SDXL-shaped) base model. Read-only."""
    from clif_serve.models.loading import load_base_model

    return load_base_model("tiny-xl")


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """`clif-serve export --model tiny` (recipe tiny: plain UNet + unet_lora), through the CLI, once per
    test run for every test that needs it. Read-only."""
    from clif_serve.cli import main
    from clif_serve.contract.folder import open_export

    out = tmp_path_factory.mktemp("exports") / "tiny"
    assert main(["export", "--model", "tiny", "--out", str(out)]) == 0
    return open_export(out)


@pytest.fixture(scope="session")
def tiny_bank_export(tmp_path_factory):
    """`clif-serve export --model tiny --recipe tiny-bank` (plain UNet + unet_bank, 8 LoRA sets of rank
    8), once per test run. Read-only."""
    from clif_serve.cli import main
    from clif_serve.contract.folder import open_export

    out = tmp_path_factory.mktemp("exports") / "tiny-bank"
    assert main(["export", "--model", "tiny", "--recipe", "tiny-bank", "--out", str(out)]) == 0
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


# --- scorers and photos for `clif-serve eval` (tests/evaluation, and against a server in tests/serving) ---


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A CLIPModel built from a config (text tower as wide as the tiny base encoder) with a tokenizer."""
    from transformers import CLIPModel

    from clif_serve.models.vocab import build_clip_tokenizer
    from clif_serve.training.image_tower import tiny_clip_config

    folder = tmp_path_factory.mktemp("clip")
    tokenizer = build_clip_tokenizer()
    config = tiny_clip_config(vocab_size=len(tokenizer), image_size=32, patch_size=8)
    torch.manual_seed(11)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_dino_dir(tmp_path_factory) -> Path:
    """A DINOv2 model built from a config."""
    from transformers import Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("dino")
    torch.manual_seed(12)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                          image_size=32, patch_size=8)
    Dinov2Model(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def pair_photos(tmp_path_factory) -> dict[str, Path]:
    """Photos of a look-alike pair of world toys (4 each), as a user's concept folders."""
    from clif_serve.evaluation.concept_data import write_concept_folder
    from clif_serve.evaluation.world import look_alike_pair

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    pair = look_alike_pair(rng)
    return {name: write_concept_folder(root / name, toy, rng, 4) for name, toy in zip(("ann", "bob"), pair, strict=True)}
