"""`clif-serve repo --no-regions`: a deployment served without regional requests, on a real tritonserver.

With `--no-lora-adapters` too, nothing reaches `unet_lora` any more, so the repository leaves that second
UNet session out (what lets a full-size SDXL export be served on a 24 GiB machine); regional requests
are refused naming `regions` before any stage runs, and the published limit says so.
"""

from __future__ import annotations

import numpy as np
import pytest

from clif_serve.cli import main
from clif_serve.errors import InputError
from clif_serve.runtime.regions import Region
from clif_serve.runtime.request import GenerationRequest
from clif_serve.serving.client import ClifClient
from clif_serve.serving.configs import read_config
from clif_serve.serving.launcher import Ports, TritonServer
from clif_serve.serving.protocol import PIPELINE_MODEL
from tests.serving.test_repository import _parameters
from tests.serving.test_server import _ort_images

STAGES = ("text_encoder", "unet", "vae_decoder")


def _repo(export, out, *flags: str):
    assert main(["repo", "--export", str(export.root), "--out", str(out), "--pipeline-instances", "1", *flags]) == 0
    return out


def test_no_regions_keeps_unet_lora_only_for_adapters(tiny_export, tmp_path):
    assert tiny_export.deployment.region_slots > 0, "the tiny export serves regions by default"
    adapters = _repo(tiny_export, tmp_path / "adapters", "--no-regions")
    assert (adapters / "unet_lora").is_dir(), "LoRA sets still run as adapters of unet_lora"
    pipeline = read_config(adapters / PIPELINE_MODEL / "config.pbtxt")
    assert pipeline.parameters["limit.max_regions"].string_value == "0"
    assert not _parameters(pipeline).regions
    plain = _repo(tiny_export, tmp_path / "plain", "--no-regions", "--no-lora-adapters")
    assert not (plain / "unet_lora").exists()
    assert sorted(p.name for p in plain.iterdir() if p.is_dir()) == sorted([*STAGES, PIPELINE_MODEL, "clif_concepts"])
    default = read_config(_repo(tiny_export, tmp_path / "default") / PIPELINE_MODEL / "config.pbtxt")
    assert int(default.parameters["limit.max_regions"].string_value) == tiny_export.deployment.region_slots


def test_served_without_regions(tiny_export, packs, tmp_path):
    repo = _repo(tiny_export, tmp_path / "repo", "--no-regions", "--no-lora-adapters")
    server = TritonServer(repo, Ports.free_on_loopback(), concept_store=tmp_path / "store", log_file=tmp_path / "server.log")
    joe, rex = packs["joe"], packs["rex"]
    with server, ClifClient(server.grpc_url) as client:
        client.add_concept(joe)
        client.add_concept(rex)
        request = GenerationRequest("a photo of <joe> and <rex>", steps=3, seed=4)
        assert np.array_equal(client.generate(request), _ort_images(tiny_export, [joe, rex], request))
        before = {stage: client.statistics(stage).get("execution_count", 0) for stage in STAGES}
        regional = GenerationRequest("<joe> and <rex>", steps=3, regions=(Region("<joe>", box=(0, 0, 0.5, 1)),))
        with pytest.raises(InputError) as refused:
            client.generate(regional)
        assert refused.value.field == "regions" and "no regions" in refused.value.message
        assert {stage: client.statistics(stage).get("execution_count", 0) for stage in STAGES} == before
        assert client.generate(request).shape == (1, 64, 64, 3), "the server keeps serving"
