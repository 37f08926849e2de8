"""Fixtures of the evaluation tests: config-built tiny CLIP and DINOv2 folders, world concept photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


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


@pytest.fixture(scope="session")
def quick_world(tmp_path_factory):
    """The smoke-run world (every count tiny: it draws noise), built once per session."""
    from clif_serve.evaluation.world_model import QUICK_RECIPE, build_world

    return build_world(QUICK_RECIPE, tmp_path_factory.mktemp("worlds"))
