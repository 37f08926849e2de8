"""Regions on the session's real tritonserver: served == in process, the full-image identity, regional and
plain requests in one stage batch, every bad regions input refused naming `regions`, raw gRPC and
KServe-v2 HTTP clients, the CLI."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import replace

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from clif_serve.errors import InputError
from clif_serve.runtime.regions import Region
from clif_serve.runtime.request import GenerationRequest
from clif_serve.serving.client import ClifClient
from clif_serve.serving.protocol import IMAGES_OUTPUT, PIPELINE_MODEL
from tests.serving.test_http_json import _http
from tests.serving.test_server import (
    _ensure,
    _max_diff,
    _ort_images,
    _raw_input,
    _torch_images,
    answers_while_clients_run,
    generate_together,
)

LEFT, RIGHT = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)
PROMPT = "a photo of <joe> walking <rex> on the beach"


def _left_mask(value: float = 1.0, size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), np.float32)
    mask[:, : size // 2] = value
    return mask


def _regional(**options) -> GenerationRequest:
    values = {"negative_prompt": "blurry", "steps": 4, "seed": 7} | options
    regions = (Region("a photo of <joe>", mask=_left_mask()), Region("<rex> on the sand", box=RIGHT))
    return GenerationRequest(PROMPT, regions=regions, **values)


def test_served_regional_images_equal_in_process_images(served, packs, tiny_export, tiny_base):
    joe, rex = packs["joe"], packs["rex"]
    _ensure(served.client, joe, rex)
    request = _regional(num_images=2)
    images = served.client.generate(request)
    assert images.shape == (2, 64, 64, 3)
    assert _max_diff(images, _ort_images(tiny_export, [joe, rex], request)) == 0
    assert _max_diff(images, _torch_images(tiny_base, [joe, rex], request)) <= 1
    assert _max_diff(images, served.client.generate(GenerationRequest(PROMPT, negative_prompt="blurry", steps=4, seed=7, num_images=2))) > 0
    whole = GenerationRequest(PROMPT, steps=4, seed=3, regions=(Region(PROMPT, box=(0, 0, 1, 1)),))
    assert _max_diff(served.client.generate(whole), served.client.generate(GenerationRequest(PROMPT, steps=4, seed=3))) == 0


def test_served_regions_with_a_lora_concept(served, packs, tiny_export):
    joe, ann = packs["joe"], packs["ann_lora"]
    _ensure(served.client, joe, ann)
    request = GenerationRequest(
        "<joe> and <ann_lora>", steps=3, seed=2, regions=(Region("<joe>", box=LEFT), Region("<ann_lora>", box=RIGHT))
    )
    assert _max_diff(served.client.generate(request), _ort_images(tiny_export, [joe, ann], request)) == 0


def test_regional_and_plain_requests_share_stage_batches(served, packs):
    """A regional request and a plain one whose concepts carry the same LoRA set both run on unet_lora with
    that adapter (a third, plain, on unet): sent together, unet_lora and text_encoder batches hold more
    than one request, and the stage runs them as one onnxruntime batch."""
    _ensure(served.client, packs["joe"], packs["ann_lora"])
    regions = (Region("<ann_lora>", box=LEFT), Region("<joe> waving", box=RIGHT))
    requests = {
        "regional": GenerationRequest("<ann_lora> and <joe>", steps=4, seed=2, regions=regions),
        "plain_lora": GenerationRequest("<ann_lora> in a garden", steps=4, seed=2),
        "plain": GenerationRequest("a photo of <joe>", steps=4, seed=2),
    }
    expected = {name: served.client.generate(request) for name, request in requests.items()}
    results, merged = generate_together(served, requests, ("text_encoder", "unet_lora"))
    # Only the regional and the plain-LoRA client reach unet_lora: a batch of more than 2 samples there
    # holds one request of each (Triton batches requests that send the same inputs: both send lora_id).
    assert merged["text_encoder"] and merged["unet_lora"], merged
    for name in requests:
        for image in results[name]:
            assert _max_diff(image, expected[name]) <= 1


BAD_REGIONS = {
    "box-outside": [Region("<joe>", box=(0.0, 0.0, 1.5, 1.0))],
    "box-empty": [Region("<joe>", box=(0.3, 0.2, 0.3, 0.9))],
    "box-outside-pixels": [Region("<joe>", box=(0, 0, 65, 64), pixels=True)],
    "mask-wrong-size": [Region("<joe>", mask=_left_mask(size=32))],
    "mask-empty": [Region("<joe>", mask=np.zeros((64, 64), np.float32))],
    "unknown-concept": [Region("<nobody> waves", box=LEFT)],
    "too-many": [Region(f"thing {i}", box=(i / 5, 0.0, (i + 1) / 5, 1.0)) for i in range(5)],
    "overlap": [Region("<joe>", box=(0.0, 0.0, 0.7, 1.0)), Region("<rex>", box=(0.5, 0.0, 1.0, 1.0))],
    "prompt-too-long": [Region("a photo " * 40, box=LEFT)],
}


@pytest.mark.parametrize("label", BAD_REGIONS)
def test_bad_regions_are_refused_naming_regions(served, packs, label):
    _ensure(served.client, packs["joe"], packs["rex"])
    with pytest.raises(InputError) as refused:
        served.client.generate(GenerationRequest("a photo", steps=2, regions=tuple(BAD_REGIONS[label])))
    assert refused.value.field == "regions", refused.value


def test_bad_regions_fail_alone_while_batch_mates_succeed(served, packs):
    """Bad `regions` inputs (decoded badly, or refused by the region checks) sent raw while regional and plain
    clients generate: each bad one is INVALID_ARGUMENT naming `regions`, every good request succeeds and
    gets the image it gets alone."""
    _ensure(served.client, packs["joe"], packs["rex"])
    good = [
        GenerationRequest("<joe> and <rex>", steps=3, seed=5, regions=(Region("<joe>", box=LEFT), Region("<rex>", box=RIGHT))),
        GenerationRequest("a photo of <joe>", steps=3, seed=5),
    ]
    expected = [served.client.generate(request) for request in good]
    bad = [MALFORMED["not-json"], MALFORMED["mask-rgb"]] + [
        np.array([_element({"prompt": "<joe>", "box": box}) for box in boxes], np.object_)
        for boxes in ([[0, 0, 0.7, 1], [0.5, 0, 1, 1]], [[0, 0, 2, 1]], [[i / 5, 0, (i + 1) / 5, 1] for i in range(5)])
    ]
    failures, images = [], []

    def client_loop(index: int) -> None:
        with ClifClient(served.server.grpc_url) as client:
            for _ in range(2):
                try:
                    images.append((index % 2, client.generate(good[index % 2])))
                except Exception as exc:  # counted: none may fail
                    failures.append(repr(exc))

    prompt, steps = np.array([b"<joe> and <rex>"], np.object_), np.array([3], np.int32)
    raw = [(PIPELINE_MODEL, {"prompt": prompt, "steps": steps, "regions": regions}) for regions in bad]
    refusals = [answer[1:] for answer in answers_while_clients_run(served, client_loop, 4, raw)]
    assert failures == [] and len(images) == 8
    for index, image in images:
        assert _max_diff(image, expected[index]) <= 1
    assert len(refusals) >= len(bad)
    for status, message in refusals:
        assert status == "StatusCode.INVALID_ARGUMENT" and "regions" in message, (status, message)


def _png_b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _element(item) -> bytes:
    return (item if isinstance(item, str) else json.dumps(item)).encode()


MALFORMED = {
    "not-json": np.array([b"{prompt: x"], np.object_),
    "not-an-object": np.array([_element(["x", [0, 0, 1, 1]])], np.object_),
    "unknown-key": np.array([_element({"prompt": "x", "box": [0, 0, 1, 1], "colour": "red"})], np.object_),
    "no-prompt": np.array([_element({"box": [0, 0, 1, 1]})], np.object_),
    "box-not-a-list": np.array([_element({"prompt": "x", "box": "0,0,1,1"})], np.object_),
    "bad-units": np.array([_element({"prompt": "x", "box": [0, 0, 1, 1], "units": "inches"})], np.object_),
    "mask-not-base64": np.array([_element({"prompt": "x", "mask": "%%%"})], np.object_),
    "mask-not-png": np.array([_element({"prompt": "x", "mask": base64.b64encode(b"GIF8 nope").decode()})], np.object_),
    "mask-rgb": np.array([_element({"prompt": "x", "mask": _png_b64(np.zeros((64, 64, 3), np.uint8))})], np.object_),
    "not-utf8": np.array([b"\xff\xfe"], np.object_),
    "wrong-dtype": np.zeros((1,), np.float32),
    "two-dimensional": np.array([[_element({"prompt": "x", "box": [0, 0, 1, 1]})]], np.object_),
}


@pytest.mark.parametrize("label", MALFORMED)
def test_malformed_regions_tensors_are_invalid_argument_naming_regions(served, label):
    inputs = [_raw_input("prompt", np.array([b"a photo"], np.object_)), _raw_input("regions", MALFORMED[label])]
    with grpcclient.InferenceServerClient(served.server.grpc_url) as raw:
        with pytest.raises(InferenceServerException) as refused:
            raw.infer(PIPELINE_MODEL, inputs)
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "'regions'" in refused.value.message() or "regions: " in refused.value.message(), refused.value.message()
        ok = raw.infer(PIPELINE_MODEL, [_raw_input("prompt", np.array([b"a photo"], np.object_))])
        assert ok.as_numpy(IMAGES_OUTPUT).shape == (1, 64, 64, 3)  # the server keeps serving


def test_raw_grpc_and_kserve_http_clients_send_regions(served, packs, tiny_export):
    """What docs/regions.md shows: JSON elements over gRPC with tritonclient, and over KServe-v2 HTTP; both
    images equal the in-process (ONNX Runtime) image of the same regional request."""
    joe, rex = packs["joe"], packs["rex"]
    _ensure(served.client, joe, rex)
    regions = [{"prompt": "<joe>", "box": [0, 0, 0.5, 1]}, {"prompt": "<rex>", "box": [32, 0, 64, 64], "units": "pixels"}]
    in_process = GenerationRequest(
        "<joe> and <rex>", steps=3, seed=4, regions=(Region("<joe>", box=LEFT), Region("<rex>", box=(32, 0, 64, 64), pixels=True))
    )
    expected = _ort_images(tiny_export, [joe, rex], in_process)
    assert _max_diff(expected, _ort_images(tiny_export, [joe, rex], replace(in_process, regions=()))) > 0
    with grpcclient.InferenceServerClient(served.server.grpc_url) as raw:
        inputs = [
            _raw_input("prompt", np.array([b"<joe> and <rex>"], np.object_)),
            _raw_input("steps", np.array([3], np.int32)),
            _raw_input("seed", np.array([4], np.int64)),
            _raw_input("regions", np.array([json.dumps(r).encode() for r in regions], np.object_)),
        ]
        assert _max_diff(raw.infer(PIPELINE_MODEL, inputs).as_numpy(IMAGES_OUTPUT), expected) == 0
    body = {
        "inputs": [
            {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["<joe> and <rex>"]},
            {"name": "steps", "datatype": "INT32", "shape": [1], "data": [3]},
            {"name": "seed", "datatype": "INT64", "shape": [1], "data": [4]},
            {"name": "regions", "datatype": "BYTES", "shape": [2], "data": [json.dumps(r) for r in regions]},
        ],
        "outputs": [{"name": IMAGES_OUTPUT}],
    }
    # What a raw client finds out about the input: the metadata API is open to inference clients (the config
    # API, with format.regions and limit.max_regions, is a management API: admin key only).
    metadata = _http(served, f"/v2/models/{PIPELINE_MODEL}")
    (entry,) = [tensor for tensor in metadata["inputs"] if tensor["name"] == "regions"]
    assert (entry["datatype"], entry["shape"]) == ("BYTES", [-1])
    (output,) = _http(served, f"/v2/models/{PIPELINE_MODEL}/infer", body)["outputs"]
    assert output["shape"] == [1, 64, 64, 3]
    assert _max_diff(np.array(output["data"], np.uint8).reshape(output["shape"]), expected) == 0


def test_cli_sends_regions_to_the_server(served, packs, tmp_path, capsys):
    from clif_serve.cli import main

    _ensure(served.client, packs["joe"], packs["rex"])
    out = tmp_path / "out.png"
    args = ["generate", "<joe> and <rex>", "--url", served.server.grpc_url, "--steps", "3", "--seed", "6", "-o", str(out)]
    assert main([*args, "--region", "<joe>=0,0,0.5,1", "--region", "<rex>=32,0,64,64px"]) == 0
    request = GenerationRequest(
        "<joe> and <rex>", steps=3, seed=6, regions=(Region("<joe>", box=LEFT), Region("<rex>", box=RIGHT))
    )
    assert _max_diff(np.asarray(Image.open(out))[None], served.client.generate(request)) == 0
    assert main([*args, "--region", "<joe>=0,0,0.7,1", "--region", "<rex>=0.5,0,1,1"]) == 2
    assert "regions: regions 0 and 1 overlap" in capsys.readouterr().err
