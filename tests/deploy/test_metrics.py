"""The HPA's metrics exist: a real tritonserver (2.51, the NGC 24.10 release) exports every Triton
metric the prometheus-adapter rules query, labelled with the model the rules select.

The served model is a one-line Python-backend stand-in named like the pipeline model (the real
repository needs an export, about a minute and a half here); what is checked is Triton's own
metric names and labels, and that one request moves the counters the queue-time rule divides."""

from __future__ import annotations

import re
import textwrap
import time
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient

from clif_serve.serving.launcher import Ports, TritonServer
from clif_serve.serving.protocol import PIPELINE_MODEL
from tests.deploy.conftest import adapter_rules

SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$")

STAND_IN_CONFIG = f"""
name: "{PIPELINE_MODEL}"
backend: "python"
max_batch_size: 0
input [{{ name: "x" data_type: TYPE_FP32 dims: [1] }}]
output [{{ name: "y" data_type: TYPE_FP32 dims: [1] }}]
instance_group [{{ kind: KIND_CPU count: 1 }}]
"""

STAND_IN_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        outputs = [pb_utils.get_input_tensor_by_name(r, "x").as_numpy() for r in requests]
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", y)]) for y in outputs]
"""


def scrape(port: int) -> dict[tuple[str, str], float]:
    """Triton's metrics endpoint as {(metric, model label): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            samples[(match.group(1), labels.get("model", ""))] = float(match.group(3))
    return samples


def scrape_until_counted(port: int, timeout_s: float = 15.0) -> dict[tuple[str, str], float]:
    """The metrics once the one request is counted (Triton updates its counters a moment later)."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(port)
        if samples.get(("nv_inference_request_success", PIPELINE_MODEL)) == 1 or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def test_triton_exports_the_metrics_the_adapter_rules_query(tmp_path):
    version_dir = tmp_path / "repo" / PIPELINE_MODEL / "1"
    version_dir.mkdir(parents=True)
    (version_dir.parent / "config.pbtxt").write_text(STAND_IN_CONFIG)
    (version_dir / "model.py").write_text(textwrap.dedent(STAND_IN_MODEL))
    with TritonServer(
        tmp_path / "repo", Ports.free_on_loopback(), log_file=tmp_path / "server.log"
    ) as server:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            given = grpcclient.InferInput("x", [1], "FP32")
            given.set_data_from_numpy(np.ones(1, np.float32))
            client.infer(PIPELINE_MODEL, [given])
        samples = scrape_until_counted(server.ports.metrics)
    queried = {
        metric
        for rule in adapter_rules()
        for query in (rule["seriesQuery"], rule["metricsQuery"])
        for metric in re.findall(r"\b(nv_inference_\w+)\{", query)
    }
    assert queried == {
        "nv_inference_queue_duration_us",
        "nv_inference_request_success",
        "nv_inference_pending_request_count",
    }
    for metric in queried:
        assert (metric, PIPELINE_MODEL) in samples, f"Triton exports no {metric} for model {PIPELINE_MODEL}"
    assert samples[("nv_inference_request_success", PIPELINE_MODEL)] == 1
    assert samples[("nv_inference_pending_request_count", PIPELINE_MODEL)] == 0
    for rule in adapter_rules():
        for query in (rule["seriesQuery"], rule["metricsQuery"]):
            assert f'model="{PIPELINE_MODEL}"' in query, query
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }
