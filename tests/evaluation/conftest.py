"""Fixtures of the evaluation tests: the smoke-run world (the scorers' folders and photos: tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def quick_world(tmp_path_factory):
    """The smoke-run world (every count tiny: it draws noise), built once per session."""
    from clif_serve.evaluation.world_model import QUICK_RECIPE, build_world

    return build_world(QUICK_RECIPE, tmp_path_factory.mktemp("worlds"))
