"""benchmarks/full_size.py's UNet timing runs on the tiny models: its inputs, shaped from the folder's
configs alone, fit both the diffusers UNet and the exported ONNX UNet (SD1.5 and SDXL layouts)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from clif_serve.models.tiny import embedded_model_dir

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "full_size.py"


@pytest.fixture(scope="module")
def full_size():
    spec = importlib.util.spec_from_file_location("full_size", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _latency(full_size, tmp_path, *args: str) -> dict:
    out = tmp_path / "latency.json"
    full_size.main(["unet-latency", "--calls", "1", "--json", str(out), *args])
    return json.loads(out.read_text())


def test_pytorch_and_onnxruntime_time_the_same_inputs(full_size, tiny_export, tmp_path):
    folder = embedded_model_dir("tiny")
    result = _latency(full_size, tmp_path, "--model", str(folder), "--export", str(tiny_export.root), "--size", "64")
    assert result["torch_ms"] > 0 and result["ort_ms"] > 0
    assert result["device"] == "cpu"


def test_the_pytorch_side_needs_no_export_and_feeds_sdxl_its_added_inputs(full_size, tmp_path):
    folder = embedded_model_dir("tiny-xl")
    feed = full_size.unet_feed(folder, 64)
    assert feed["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]] * 2
    result = _latency(full_size, tmp_path, "--model", str(folder), "--size", "64", "--side", "torch")
    assert result["torch_ms"] > 0 and "ort_ms" not in result


def test_report_names_the_machine_of_each_model(full_size):
    """Rows of different models may come from different machines: each model's table says which."""
    report = {
        "models": {"sd15": {"repo": {"wall_s": 3.8, "peak_rss_gib": 0.2}}, "sdxl": {"repo": {"wall_s": 1.5, "peak_rss_gib": 0.2}}},
        "environments": {"sd15": {"cpu": "AMD EPYC", "cpu_count": 2}, "sdxl": {"cpu": "Intel(R) Xeon(R) Processor", "cpu_count": 2}},
        "notes": {},
    }
    text = full_size.markdown(report)
    sd15, sdxl = text.split("## sdxl")
    assert "Measured on AMD EPYC (2 cores)" in sd15 and "Intel" not in sd15
    assert "Measured on Intel(R) Xeon(R) Processor (2 cores)" in sdxl
