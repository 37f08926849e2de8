"""The GPU-resident data path without a GPU: what `clif-serve repo --device cuda` writes, how a model
instance learns its device, and that the device-deciding code runs on CPU tensors bit-identically to
onnxruntime's plain `run` (the CUDA side itself has not been run: no GPU here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf.json_format import MessageToDict
from tritonclient.grpc import model_config_pb2 as pb

from clif_serve.cli import main
from clif_serve.contract.ort_settings import OrtSettings
from clif_serve.contract.stages import UNET, VAE_DECODER
from clif_serve.errors import InputError
from clif_serve.runtime.ort_device import OrtDevice
from clif_serve.serving.configs import read_config
from clif_serve.serving.context import instance_device
from clif_serve.serving.options import RepoOptions
from clif_serve.serving.parameters import FORCE_CPU_ONLY_INPUT_TENSORS, ModelParameters
from clif_serve.serving.protocol import CONCEPTS_MODEL, PIPELINE_MODEL
from clif_serve.serving.repository import build_repository
from clif_serve.serving.stage_requests import StageRequestCheck
from clif_serve.serving.stage_runner import StageRunner


def _kinds(config) -> set[str]:
    return {pb.ModelInstanceGroup.Kind.Name(group.kind) for group in config.instance_group}


def test_cuda_repository_runs_python_models_on_the_gpu_with_gpu_inputs(tiny_export, tmp_path):
    out = tmp_path / "cuda"
    assert main(["repo", "--export", str(tiny_export.root), "--out", str(out), "--device", "cuda"]) == 0
    stages = ["text_encoder", UNET, "unet_lora", VAE_DECODER]
    for stage in stages:
        config = read_config(out / stage / "config.pbtxt")
        assert _kinds(config) == {"KIND_GPU"}, stage
        assert config.parameters[FORCE_CPU_ONLY_INPUT_TENSORS].string_value == "no", stage
        # The models still read their typed parameters from the same config (Triton's key is skipped).
        parameters = MessageToDict(config, preserving_proto_field_name=True)["parameters"]
        assert ModelParameters.from_config(parameters) == ModelParameters()
    pipeline = read_config(out / PIPELINE_MODEL / "config.pbtxt")
    assert _kinds(pipeline) == {"KIND_GPU"}, "the sampling loop's tensors live on the GPU"
    assert FORCE_CPU_ONLY_INPUT_TENSORS not in pipeline.parameters, "its inputs are the client's, on the host"
    cpu = build_repository(tiny_export.root, tmp_path / "cpu", RepoOptions())
    for model in (UNET, PIPELINE_MODEL, CONCEPTS_MODEL):
        config = read_config(cpu / model / "config.pbtxt")
        assert _kinds(config) == {"KIND_CPU"} and FORCE_CPU_ONLY_INPUT_TENSORS not in config.parameters, model


def test_native_backends_and_bad_devices(tiny_export, tmp_path):
    native = build_repository(tiny_export.root, tmp_path / "ort", RepoOptions(backend="onnxruntime", device="cuda"))
    unet = read_config(native / UNET / "config.pbtxt")
    assert unet.backend == "onnxruntime" and _kinds(unet) == {"KIND_GPU"} and not unet.parameters
    with pytest.raises(InputError) as bad:
        RepoOptions(device="tpu").validate()
    assert bad.value.field == "device"


def test_instances_learn_their_device_from_triton():
    assert instance_device("GPU", "1") == "cuda:1"
    assert instance_device("CPU", "0") == "cpu"
    assert OrtDevice.parse(instance_device("GPU", "2")) == OrtDevice("cuda", 2)
    assert OrtDevice.parse("cpu").providers == ["CPUExecutionProvider"]
    assert OrtDevice.parse("cuda:1").providers[0] == ("CUDAExecutionProvider", {"device_id": 1})
    with pytest.raises(ValueError, match="device must be"):
        OrtDevice.parse("tpu")


def test_bound_stage_runs_equal_plain_runs_bit_for_bit(tiny_export):
    """The stage runner's IOBinding path (inputs bound by pointer, outputs over DLPack) on the host."""
    signature = tiny_export.deployment.signature(UNET)
    runner = StageRunner(
        tiny_export.onnx_path(UNET), signature.input_names, signature.output_names, OrtSettings(io_binding=True)
    )
    assert runner.binds
    rng = np.random.default_rng(5)
    feeds = [
        {
            "sample": rng.standard_normal((2, 4, 32, 32), np.float32),
            "timestep": np.full(2, 100.0 * (i + 1), np.float32),
            "encoder_hidden_states": rng.standard_normal((2, 77, 32), np.float32),
        }
        for i in range(3)
    ]
    together = runner.run(feeds)
    batch = {name: np.concatenate([feed[name] for feed in feeds]) for name in signature.input_names}
    (plain,) = runner.session.run(["noise_pred"], batch)
    assert np.array_equal(np.concatenate([r["noise_pred"] for r in together]), plain)
    # The host default: `run`, like the in-process executor; the same numbers.
    host = StageRunner(tiny_export.onnx_path(UNET), signature.input_names, signature.output_names)
    assert not host.binds
    assert np.array_equal(np.concatenate([r["noise_pred"] for r in host.run(feeds)]), plain)


def test_request_checks_read_torch_tensors_like_numpy(tiny_export):
    """A CUDA stage checks torch tensors; the same checks on CPU tensors give the same verdicts."""
    check = StageRequestCheck(tiny_export.deployment, UNET)
    rng = np.random.default_rng(6)
    feed = {
        "sample": rng.standard_normal((2, 4, 32, 32), np.float32),
        "timestep": np.full(2, 10.0, np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32), np.float32),
    }
    tensors = {name: torch.from_numpy(array) for name, array in feed.items()}
    checked, adapter = check(tensors)
    assert adapter is None and all(checked[name] is tensors[name] for name in tensors)
    bad = dict(tensors, sample=tensors["sample"].clone())
    bad["sample"][0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError) as nan:
        check(bad)
    assert nan.value.field == "sample" and "NaN" in str(nan.value)
    with pytest.raises(InputError, match="must be float32, got float64"):
        check(dict(tensors, timestep=tensors["timestep"].double()))
