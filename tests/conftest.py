"""Shared fixtures: a private model cache per test session and the embedded tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

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
def tiny_bank_export(request, _background_exports):
    """`clif-serve export --model tiny --recipe tiny-bank` (plain UNet + unet_bank, 8 LoRA sets of rank
    8), once per test run (in the background, see `BackgroundExports`). Read-only."""
    return _shared_export("tiny_bank_export", request, _background_exports)


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
def tiny_xl_export(request, _background_exports):
    """`clif-serve export --model tiny-xl --recipe tiny-xl --merge-lora ann` (ann of `xl_packs`): the base
    model runs on unet_lora without an adapter, other LoRA sets on unet_lora with one. Once per test
    run (in the background, see `BackgroundExports`). Read-only."""
    return _shared_export("tiny_xl_export", request, _background_exports)


# The session exports besides `tiny`, in the order the suite first uses them. Tracing is
# single-threaded Python: made by one child process that starts with the first test, they are traced
# on the second core beside the tests that come before them (deploy, evaluation, the `tiny` export).
BACKGROUND_EXPORTS = ("tiny_xl_export", "tiny_bank_export")


def _export_args(name: str, request, root: Path) -> list[str]:
    """The `clif-serve export` arguments of one of BACKGROUND_EXPORTS, writing into `root`."""
    if name == "tiny_xl_export":
        from clif_serve.concepts.pack import write_pack

        ann = write_pack(request.getfixturevalue("xl_packs")["ann"], root / "ann.safetensors")
        return ["export", "--model", "tiny-xl", "--recipe", "tiny-xl", "--merge-lora", str(ann), "--out", str(root / "tiny-xl")]
    return ["export", "--model", "tiny", "--recipe", "tiny-bank", "--out", str(root / "tiny-bank")]


class BackgroundExports:
    """`clif-serve export` runs made one after another by one child process (`tests/export_jobs.py`)."""

    def __init__(self, jobs: dict[str, list[str]], log: Path):
        self.outs = {name: Path(args[args.index("--out") + 1]) for name, args in jobs.items()}
        self.log = log
        with log.open("w") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.export_jobs", json.dumps(list(jobs.values()))],
                cwd=Path(__file__).resolve().parents[1], stdout=output, stderr=subprocess.STDOUT,
            )

    def wait(self, name: str):
        """Job `name`'s export folder, once it is in place (the exporter moves it there complete)."""
        from clif_serve.contract.folder import MANIFEST, open_export

        out = self.outs[name]
        while not (out / MANIFEST).is_file():
            if self.process.poll() is not None and not (out / MANIFEST).is_file():
                raise AssertionError(f"the background export {name} failed:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.2)
        return open_export(out)

    def close(self) -> None:
        if self.process.poll() is None:  # the session ended before it needed them all
            self.process.kill()
        self.process.wait()


@pytest.fixture(scope="session", autouse=True)
def _background_exports(_private_cache, request, tmp_path_factory):
    """Start the BACKGROUND_EXPORTS the selected tests name (None when they name none)."""
    named = {name for item in request.session.items for name in item.fixturenames}
    exports = None
    if named.intersection(BACKGROUND_EXPORTS):
        root = tmp_path_factory.mktemp("exports-background")
        jobs = {name: _export_args(name, request, root) for name in BACKGROUND_EXPORTS if name in named}
        exports = BackgroundExports(jobs, root / "exports.log")
    yield exports
    if exports is not None:
        exports.close()


def _shared_export(name: str, request, background: BackgroundExports | None):
    """One of BACKGROUND_EXPORTS: from the background run, or made here when no selected test named it
    (a fixture that asks for it by `request.getfixturevalue`)."""
    if background is not None and name in background.outs:
        return background.wait(name)
    from clif_serve.cli import main
    from clif_serve.contract.folder import open_export

    args = _export_args(name, request, request.getfixturevalue("tmp_path_factory").mktemp("exports"))
    assert main(args) == 0
    return open_export(args[-1])
