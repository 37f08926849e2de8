"""Shared fixtures: a private model cache per test session and the embedded tiny models."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

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
