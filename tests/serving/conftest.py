"""Fixtures of the serving tests: packs, and one real tritonserver per session (on the shared tiny export)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from clif_serve.serving.client import ClifClient
from clif_serve.serving.launcher import Ports, TritonServer
from clif_serve.serving.options import RepoOptions
from clif_serve.serving.parameters import ModelParameters
from clif_serve.serving.repository import build_repository
from tests.helpers import random_lora, random_pack


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


def with_value(pack, value: float) -> dict[str, torch.Tensor]:
    """The pack's embeddings with one entry set to `value` (NaN, Inf)."""
    embeddings = {k: v.clone() for k, v in pack.embeddings.items()}
    next(iter(embeddings.values()))[0, 0] = value
    return embeddings


MAX_PACK_BYTES = 128 * 1024
# Queue delays long enough that concurrent requests meet in the stage batchers on 2 busy cores.
BATCHING = {"text_encoder_delay_us": 20_000, "unet_delay_us": 4_000}


@dataclass
class Served:
    server: TritonServer
    client: ClifClient
    store: Path
    load_seconds: float


@pytest.fixture(scope="session")
def served(tiny_export, tmp_path_factory):
    """One real tritonserver for the serving tests, on loopback, serving the tiny export."""
    root = tmp_path_factory.mktemp("served")
    options = RepoOptions(pipeline_instances=4, models=ModelParameters(max_pack_bytes=MAX_PACK_BYTES), **BATCHING)
    repo = build_repository(tiny_export.root, root / "repo", options)
    server = TritonServer(
        repo, Ports.free_on_loopback(), concept_store=root / "store", log_file=root / "server.log"
    )
    started = time.perf_counter()
    server.start(timeout_s=300)
    load_seconds = time.perf_counter() - started
    print(f"\nserver ready (all models loaded) in {load_seconds:.1f} s")
    client = ClifClient(server.grpc_url)
    yield Served(server, client, root / "store", load_seconds)
    client.close()
    assert server.stop() == 0
