"""Shared fixtures: a private model cache per test session and the embedded tiny models."""

from __future__ import annotations

import os

import pytest

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
