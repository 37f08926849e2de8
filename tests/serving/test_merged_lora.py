"""An export with a trained LoRA set merged (`clif-serve export --merge-lora`), served on a real tritonserver.

The routing comes from the deployment contract: a request without LoRA runs on `unet_lora` without
adapter, a concept of the merged set on the plain `unet`; on a deployment that takes no adapters
(`clif-serve repo --no-lora-adapters`) a concept of another LoRA set is refused naming the field
before any stage runs.
"""

from __future__ import annotations

import numpy as np
import pytest

from clif_serve.cli import main
from clif_serve.concepts.pack import read_pack
from clif_serve.concepts.store import ConceptStore
from clif_serve.contract.folder import open_export
from clif_serve.errors import InputError, PackError
from clif_serve.export.exporter import resume_key
from clif_serve.export.recipe import load_recipe
from clif_serve.runtime.factory import ort_pipeline
from clif_serve.runtime.images import to_uint8
from clif_serve.runtime.request import GenerationRequest
from clif_serve.serving.client import ClifClient
from clif_serve.serving.launcher import Ports, TritonServer
from tests.helpers import interrupted_export
from tests.training.conftest import draw_concept

STAGES = ("text_encoder", "unet", "unet_lora", "vae_decoder")


@pytest.fixture(scope="module")
def merged_server(tmp_path_factory, packs, tiny_base, tiny_export):
    root = tmp_path_factory.mktemp("merged")
    ann = draw_concept(root / "photos" / "ann", (200, 40, 40), (30, 30, 200), seed=1)
    bob = draw_concept(root / "photos" / "bob", (200, 40, 40), (30, 160, 30), seed=2)
    trained = root / "packs"
    assert main(["train", "--model", "tiny", "--concept", f"ann={ann}:dog", "--concept", f"bob={bob}:cat",
                 "--steps", "clif=2,ti=2,lora=2", "--rank", "4", "--out", str(trained)]) == 0
    export = root / "export"
    # Only `unet` differs from the session's tiny export (the other stages never see the merged LoRA):
    # its stages are handed over as an interrupted export of the same inputs would leave them, so the
    # export below traces and parity-checks the merged `unet` alone (clif_serve.export.staging).
    recipe = load_recipe("tiny")
    deployment = recipe.deployment(tiny_base.spec, read_pack(trained / "ann.safetensors").lora.set_id)
    key = resume_key(tiny_base, deployment, recipe, weight_map=False)
    interrupted_export(export, key, tiny_export, [s for s in STAGES if s != "unet"])
    assert main(["export", "--model", "tiny", "--out", str(export), "--merge-lora", str(trained / "ann.safetensors")]) == 0
    assert open_export(export).stage_record("unet")["merged_lora"] == deployment.merged_lora
    repo = root / "repo"
    assert main(["repo", "--export", str(export), "--out", str(repo), "--pipeline-instances", "1",
                 "--no-lora-adapters"]) == 0
    store = root / "store"
    server = TritonServer(repo, Ports.free_on_loopback(), concept_store=store, log_file=root / "server.log")
    with server, ClifClient(server.grpc_url) as client:
        set_packs = [read_pack(trained / f"{name}.safetensors") for name in ("ann", "bob")]
        for pack in set_packs:
            client.add_concept(pack)
        yield client, open_export(export), set_packs, store


def _executions(client) -> dict[str, int]:
    return {stage: int(client.statistics(stage).get("execution_count", 0)) for stage in STAGES}


def test_merged_export_serves_requests_with_and_without_its_lora(merged_server, packs):
    client, export, (ann, bob), _ = merged_server
    assert ann.lora is not None and ann.lora.set_id == bob.lora.set_id == export.deployment.merged_lora
    in_process = ort_pipeline(export.root, [ann, bob])
    before = _executions(client)
    for prompt in ("a red house by a lake", "a photo of <ann> and <bob>"):  # (a) no LoRA, (b) the merged set
        request = GenerationRequest(prompt, negative_prompt="blurry", steps=3, seed=5)
        assert np.array_equal(client.generate(request), to_uint8(in_process.generate(request))), prompt
    after = _executions(client)
    assert after["unet_lora"] - before["unet_lora"] == 3, "(a) ran on unet_lora without adapter"
    assert after["unet"] - before["unet"] == 3, "(b) ran on the merged unet"


def test_another_lora_set_is_refused_before_any_stage_runs(merged_server, packs):
    client, _, _, store = merged_server
    other = packs["ann_lora"]  # a random LoRA set, not the merged one
    with pytest.raises(PackError) as refused:
        client.add_concept(other)
    assert refused.value.field == "unet" and "cannot run here" in refused.value.message
    ConceptStore(store).save(other)  # written into the store by another writer (e.g. a training run)
    before = _executions(client)
    with pytest.raises(InputError) as refused:
        client.generate(GenerationRequest("<ann_lora> in a garden", steps=3))
    assert refused.value.field == "prompt" and "cannot run here" in refused.value.message
    assert _executions(client) == before, "no stage ran for the refused request"
    ConceptStore(store).delete("ann_lora")
    assert client.generate(GenerationRequest("a photo of <bob>", steps=2)).shape == (1, 64, 64, 3)
