"""ClifClient without a server: local type checks, and a clear error when nothing listens."""

from __future__ import annotations

import pytest

from clif_serve.errors import InputError, PackError
from clif_serve.runtime.request import GenerationRequest
from clif_serve.serving.client import ClifClient, ServerError
from clif_serve.serving.launcher import free_port


@pytest.fixture
def nowhere():
    with ClifClient(f"127.0.0.1:{free_port()}", timeout_s=5) as client:
        yield client


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"steps": 2.5}, "steps"),
        ({"seed": True}, "seed"),
        ({"guidance_scale": "7"}, "guidance_scale"),
        ({"seed": 2**70}, "seed"),
    ],
)
def test_wrong_python_types_are_refused_before_sending(nowhere, fields, field):
    with pytest.raises(InputError) as refused:
        nowhere.generate(GenerationRequest("a photo", **fields))
    assert refused.value.field == field


def test_no_server_is_a_server_error(nowhere, tmp_path):
    assert not nowhere.is_ready()
    with pytest.raises(ServerError, match="UNAVAILABLE"):
        nowhere.generate(GenerationRequest("a photo"))
    with pytest.raises(PackError) as missing:
        nowhere.add_concept(tmp_path / "missing.safetensors")
    assert missing.value.field == "file"
