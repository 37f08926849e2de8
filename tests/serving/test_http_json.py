"""A raw HTTP/JSON client (urllib, no tritonclient) against the session's real tritonserver.

What docs/serving.md shows with curl: the request defaults and limits read from the served config,
a generation in plain JSON, and a hot-load with the pack as base64 text.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from dataclasses import asdict

import numpy as np

from clif_serve.concepts.pack import pack_to_bytes
from clif_serve.runtime.request import GenerationRequest
from clif_serve.serving.protocol import CONCEPTS_MODEL, PIPELINE_MODEL, ConceptsReply
from tests.helpers import random_pack


def _http(served, path: str, body: dict | None = None) -> dict:
    url = f"http://127.0.0.1:{served.server.ports.http}{path}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read())


def _infer(served, model: str, inputs: dict[str, tuple[str, object]], output: str) -> dict:
    body = {
        "inputs": [{"name": name, "shape": [1], "datatype": kind, "data": [value]} for name, (kind, value) in inputs.items()],
        "outputs": [{"name": output}],
    }
    (result,) = _http(served, f"/v2/models/{model}/infer", body)["outputs"]
    return result


def test_config_publishes_request_defaults_and_limits(served, tiny_export):
    config = _http(served, f"/v2/models/{PIPELINE_MODEL}/config")
    parameters = {key: value["string_value"] for key, value in config["parameters"].items()}
    defaults = {key.removeprefix("default."): value for key, value in parameters.items() if key.startswith("default.")}
    assert defaults == {"steps": "20", "guidance_scale": "7.5", "seed": "0", "height": "64", "width": "64", "num_images": "1"}
    optional = {tensor["name"] for tensor in config["input"] if tensor.get("optional")}
    assert set(defaults) <= optional and "negative_prompt" in optional and "prompt" not in optional
    limits = {key.removeprefix("limit."): value for key, value in parameters.items() if key.startswith("limit.")}
    assert limits == {key: str(value) for key, value in asdict(tiny_export.deployment.limits).items()}


def test_generation_and_hot_load_in_plain_json(served, tiny_base):
    pack = random_pack(tiny_base, "json_kim", seed=31)
    added = _infer(served, CONCEPTS_MODEL, {
        "action": ("BYTES", "add"),
        "pack_base64": ("BYTES", base64.b64encode(pack_to_bytes(pack)).decode()),
    }, "result")
    reply = ConceptsReply.from_json(added["data"][0])
    assert reply.concept == "json_kim" and "json_kim" in [concept.name for concept in reply.concepts]
    try:
        images = _infer(served, PIPELINE_MODEL, {
            "prompt": ("BYTES", "a photo of <json_kim>"), "steps": ("INT32", 4), "seed": ("INT64", 5),
        }, "images")
        assert images["datatype"] == "UINT8" and images["shape"] == [1, 64, 64, 3]
        over_grpc = served.client.generate(GenerationRequest("a photo of <json_kim>", steps=4, seed=5))
        assert np.array_equal(np.array(images["data"], np.uint8).reshape(images["shape"]), over_grpc)
    finally:
        removed = _infer(served, CONCEPTS_MODEL, {"action": ("BYTES", "remove"), "name": ("BYTES", "json_kim")}, "result")
    assert "json_kim" not in [concept["name"] for concept in json.loads(removed["data"][0])["concepts"]]
