"""A real tritonserver serving the tiny-bank export: concurrent requests of different LoRA sets share
`unet_bank` executions (Triton's batch statistics), and each gets the image it gets alone."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from clif_serve.lora.weights import LoraWeights
from clif_serve.runtime.images import to_uint8
from clif_serve.runtime.request import GenerationRequest
from clif_serve.serving.client import ClifClient
from clif_serve.serving.launcher import Ports, TritonServer
from clif_serve.serving.options import RepoOptions
from clif_serve.serving.repository import build_repository
from tests.helpers import random_lora, random_pack
from tests.serving.conftest import BATCHING

NAMES = ("amy", "ben", "cal", "dot")


@pytest.fixture(scope="module")
def lora_packs(tiny_base):
    """Four packs, each with its own LoRA set (ranks 2..8, so the bank pads them)."""
    made = {}
    for seed, name in enumerate(NAMES):
        lora = random_lora(tiny_base, rank=2 + 2 * seed, alpha=4.0, seed=70 + seed)
        lora = LoraWeights({k: v / 3 for k, v in lora.tensors.items()}, rank=lora.rank, alpha=lora.alpha)
        made[name] = replace(random_pack(tiny_base, name, seed=80 + seed), lora=lora)
    return made


@pytest.fixture(scope="module")
def bank_server(tiny_bank_export, tmp_path_factory):
    root = tmp_path_factory.mktemp("served-bank")
    repo = build_repository(tiny_bank_export.root, root / "repo", RepoOptions(pipeline_instances=4, **BATCHING))
    server = TritonServer(repo, Ports.free_on_loopback(), concept_store=root / "store", log_file=root / "server.log")
    server.start(timeout_s=300)
    client = ClifClient(server.grpc_url)
    yield server, client
    client.close()
    assert server.stop() == 0


def _stats(client: ClifClient, model: str) -> dict[int, int]:
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in client.statistics(model).get("batch_stats", [])}


def _request(name: str) -> GenerationRequest:
    return GenerationRequest(f"a photo of <{name}>", steps=4, seed=3)


def test_requests_of_different_lora_sets_share_unet_bank_executions(bank_server, lora_packs, tiny_bank_export):
    server, client = bank_server
    for pack in lora_packs.values():
        client.add_concept(pack)
    alone = {name: client.generate(_request(name)) for name in NAMES}
    assert len({image.tobytes() for image in alone.values()}) == len(NAMES), "the LoRA sets differ"
    from clif_serve.runtime.factory import ort_pipeline

    in_process = to_uint8(ort_pipeline(tiny_bank_export.root, list(lora_packs.values())).generate(_request("amy")))
    assert int(np.abs(in_process.astype(int) - alone["amy"].astype(int)).max()) <= 1

    before, plain_before = _stats(client, "unet_bank"), _stats(client, "unet")
    barrier, results, errors = threading.Barrier(len(NAMES)), {}, []

    def client_loop(name: str) -> None:
        with ClifClient(server.grpc_url) as own:
            for _ in range(3):
                barrier.wait(timeout=120)
                try:
                    results.setdefault(name, []).append(own.generate(_request(name)))
                except Exception as exc:  # reported below
                    errors.append(exc)

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(name,)) for name in NAMES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors and all(len(results[name]) == 3 for name in NAMES), errors
    after = _stats(client, "unet_bank")
    shared = {size: after[size] - before.get(size, 0) for size in after if size > 2 and after[size] > before.get(size, 0)}
    print(f"\nunet_bank executions by batch size > 2 in {time.perf_counter() - started:.1f} s: {shared}")
    # Each request sends 2 samples (classifier-free guidance) and every client has its own LoRA set:
    # an execution of more than 2 samples ran requests of different LoRA sets together.
    assert shared, after
    for name in NAMES:
        for image in results[name]:
            assert int(np.abs(image.astype(int) - alone[name].astype(int)).max()) <= 1
    assert _stats(client, "unet") == plain_before, "requests with a LoRA set never run on the plain unet"


def test_repository_serves_the_bank_on_the_python_backend_only(tiny_bank_export, tmp_path):
    from clif_serve.serving.configs import read_config

    repo = build_repository(tiny_bank_export.root, tmp_path / "python", RepoOptions())
    inputs = {i.name: i.optional for i in read_config(repo / "unet_bank" / "config.pbtxt").input}
    assert "lora_slot" not in inputs and inputs["lora_id"] is True, "requests name their set; the stage picks slots"
    assert not any(".lora_bank_" in name for name in inputs), "the bank stays in the stage model"
    native = build_repository(tiny_bank_export.root, tmp_path / "native", RepoOptions(backend="onnxruntime"))
    assert not (native / "unet_bank").exists(), "a native backend cannot keep a resident bank"
