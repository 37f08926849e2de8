"""benchmarks/gpu_unet.py runs on CPU with the tiny models (the GPU run uses the same code)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import load_benchmark


@pytest.fixture(scope="module")
def gpu_unet():
    return load_benchmark("gpu_unet")


def test_tiny_cpu_run_writes_report(gpu_unet, tmp_path):
    report = gpu_unet.main(
        ["--device", "cpu", "--size", "tiny", "--variants", "eager,sdpa,compile,cudagraph", "--compile-backend", "eager",
         "--warmup", "1", "--iterations", "2", "--out", str(tmp_path)]
    )
    saved = json.loads((tmp_path / "gpu_unet.json").read_text())
    assert saved["models"].keys() == {"sd15", "sdxl"}
    for model in saved["models"].values():
        assert set(model["unet_step_ms"]) == {"eager", "sdpa", "compile"}, "CUDA-only modes are skipped on CPU"
        assert all(ms > 0 for ms in model["unet_step_ms"].values())
        swap = model["concept_swap"]
        assert swap["swap_changes_output"] and not swap["compiled_recompiled_on_swap"]
        assert swap["compiled_max_abs_diff_vs_eager"] == 0.0
    assert "| sd15 | 64 | sdpa |" in (tmp_path / "gpu_unet.md").read_text()
    assert report["environment"]["size"] == "tiny"


def test_recompile_detection_can_fire(gpu_unet):
    """Negative control: a table of another shape must trip the fail_on_recompile stance."""
    nets = gpu_unet.build_networks("sd15", "tiny", "cpu", torch.float32)
    encoder = nets.text_encoders[0]
    ids = gpu_unet.concept_ids(encoder, "cpu")
    torch._dynamo.reset()
    compiled = torch.compile(encoder, backend="eager", dynamic=False)
    compiled(ids, torch.zeros(2, 2, encoder.spec.hidden_size))
    torch.compiler.set_stance("fail_on_recompile")
    try:
        with pytest.raises(Exception, match="(?i)recompil"):
            compiled(ids, torch.zeros(2, 3, encoder.spec.hidden_size))
    finally:
        torch.compiler.set_stance("default")
