"""Property-based fuzzing (hypothesis, bounded): pack parsing and request decoding raise field-named errors only.

Whatever bytes arrive as a pack, whatever tensors arrive as a generation, control or stage request,
the outcome is a valid value or an `InputError` (a `PackError` for packs) naming a field, never
another exception (which the server would answer as INTERNAL).
"""

from __future__ import annotations

import json
import string
import struct
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clif_serve.concepts.pack import pack_from_bytes, pack_to_bytes
from clif_serve.errors import InputError, PackError
from clif_serve.runtime.request import GenerationRequest
from clif_serve.serving.protocol import CONCEPTS_INPUTS, PIPELINE_INPUTS, decode_fields
from clif_serve.serving.signatures import LORA_ID_INPUT
from clif_serve.serving.stage_requests import StageRequestCheck
from tests.helpers import header_bytes, random_lora, random_pack, raw_pack_bytes, tiny_deployment

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
MANIFEST_KEYS = (
    "format", "format_version", "name", "trigger", "tokens", "class_word", "base_fingerprint",
    "text_encoders", "lora_rank", "lora_alpha", "lora_set",
)


@pytest.fixture(scope="module")
def valid(tiny_base):
    """A valid pack with a LoRA, and its bytes."""
    pack = replace(random_pack(tiny_base, "fuzz", seed=1), lora=random_lora(tiny_base, rank=2, modules=2))
    return pack, pack_to_bytes(pack)


def _parses_or_refuses(data: bytes, spec=None) -> None:
    try:
        pack = pack_from_bytes(data, max_bytes=1 << 22)
        if spec is not None:
            pack.validate_for(spec)
    except PackError as exc:
        assert exc.field and isinstance(exc.field, str)


@FUZZ
@given(data=st.data())
def test_mutated_pack_bytes(valid, tiny_base, data):
    _, original = valid
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["overwrite", "truncate", "insert", "header_length"]))
        at = data.draw(st.integers(0, len(raw)))
        if kind == "overwrite":
            raw[at : at + 8] = data.draw(st.binary(min_size=1, max_size=8))
        elif kind == "truncate":
            del raw[at:]
        elif kind == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        else:
            raw[:8] = struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1)))
    _parses_or_refuses(bytes(raw), tiny_base.spec)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(header=st.dictionaries(st.text(max_size=24) | st.sampled_from(["__metadata__", "embeddings.text_encoder"]), JSON, max_size=5),
       payload=st.binary(max_size=64))
def test_arbitrary_headers(header, payload):
    _parses_or_refuses(header_bytes(json.dumps(header), payload))


@FUZZ
@given(metadata=st.dictionaries(st.sampled_from(MANIFEST_KEYS), st.text(max_size=40) | JSON.map(json.dumps), max_size=5))
def test_arbitrary_manifest_values(valid, tiny_base, metadata):
    pack, _ = valid
    _parses_or_refuses(raw_pack_bytes(pack, metadata=metadata), tiny_base.spec)


def _arrays(max_dims: int = 3):
    """Small numpy arrays of the dtypes a Triton client can send, including object arrays of odd values."""
    shapes = st.lists(st.integers(0, 3), min_size=0, max_size=max_dims).map(tuple)
    numeric = st.tuples(
        st.sampled_from([np.int32, np.int64, np.float32, np.float64, np.bool_, np.uint8]), shapes
    ).flatmap(lambda spec: st.builds(lambda seed: np.random.default_rng(seed).integers(-(2**31), 2**31, spec[1]).astype(spec[0]), st.integers(0, 10)))
    objects = st.lists(
        st.binary(max_size=12) | st.text(max_size=12) | st.integers() | st.none() | st.floats(), min_size=0, max_size=3
    ).map(lambda values: np.array(values + [b""], dtype=np.object_)[: len(values)])
    return numeric | objects


@FUZZ
@given(inputs=st.dictionaries(st.sampled_from([f.name for f in PIPELINE_INPUTS]), _arrays(), max_size=8))
def test_generation_requests(tiny_base, inputs):
    try:
        values = decode_fields(inputs, PIPELINE_INPUTS)
        GenerationRequest(**values).validated(tiny_base.spec)
    except InputError as exc:
        assert exc.field in {f.name for f in PIPELINE_INPUTS}, exc


@FUZZ
@given(inputs=st.dictionaries(st.sampled_from([f.name for f in CONCEPTS_INPUTS]), _arrays(), max_size=4))
def test_control_requests(inputs):
    try:
        decode_fields(inputs, CONCEPTS_INPUTS)
    except InputError as exc:
        assert exc.field in {f.name for f in CONCEPTS_INPUTS}, exc


@pytest.fixture(scope="module")
def deployment(tiny_base):
    return tiny_deployment(tiny_base.spec)


def _stage_inputs(deployment, stage):
    """Tensors near a stage's signature (right names, random dtypes and shapes) plus a random lora_id."""
    names = [*deployment.signature(stage).input_names, LORA_ID_INPUT]
    floats = st.tuples(st.integers(1, 3), st.lists(st.sampled_from([0, 1, 4, 8, 16, 32, 77, 200]), min_size=0, max_size=3)).map(
        lambda shape: np.random.default_rng(sum(shape[1])).standard_normal((shape[0], *shape[1])).astype(np.float32)
    )
    ids = st.lists(st.integers(-5, 2**40), min_size=1, max_size=4).map(lambda values: np.array([values], dtype=np.int64))
    return st.dictionaries(st.sampled_from(names), floats | ids | _arrays(), max_size=len(names))


@pytest.mark.parametrize("stage", ["text_encoder", "unet_lora", "vae_decoder"])
def test_stage_requests(deployment, stage):
    check = StageRequestCheck(deployment, stage, LORA_ID_INPUT if stage == "unet_lora" else None)
    allowed = {*deployment.signature(stage).input_names, LORA_ID_INPUT}

    @FUZZ
    @given(inputs=_stage_inputs(deployment, stage))
    def run(inputs):
        try:
            check(inputs)
        except InputError as exc:
            assert exc.field in allowed, exc

    run()


@FUZZ
@given(prompt=st.text(alphabet=string.printable + "<>\\é漢\x00", max_size=60))
def test_prompts_split_or_refuse(tiny_base, prompt):
    from clif_serve.concepts.prompt import PromptEncoder

    encoder = PromptEncoder(tiny_base.tokenizers, tiny_base.spec)
    try:
        encoder.encode([prompt], {}, ["prompt"])
    except InputError as exc:
        assert exc.field == "prompt"
