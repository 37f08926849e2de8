"""Strict, bounded pack parsing: every malformed or orphan-making pack is a PackError naming a field.

Each case was an INTERNAL error or an accepted-but-never-usable pack before (issue 12): deep or
duplicate headers, entries without offsets, metadata of the wrong type, values that overflow
float32, LoRA alphas that blacken images, integer LoRA tensors, unbounded manifest strings and
token counts, control characters that forge `concepts list` rows.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from clif_serve.concepts.limits import MAX_HEADER_BYTES, MAX_MANIFEST_VALUE_BYTES, MAX_TOKENS
from clif_serve.concepts.pack import pack_from_bytes, pack_to_bytes, read_manifest, same_content, write_pack
from clif_serve.errors import PackError
from clif_serve.lora.weights import LoraWeights
from tests.helpers import edit_header, header_bytes, random_lora, random_pack, raw_pack_bytes


def _set(key, value):
    def edit(header):
        header[key] = value
        return header

    return edit


def _meta(key, value):
    def edit(header):
        header["__metadata__"][key] = value
        return header

    return edit


def _drop_offsets(header):
    del header["embeddings.text_encoder"]["data_offsets"]
    return header


def _cases(base):
    good = random_pack(base, "fine", seed=4)
    good_bytes = pack_to_bytes(good)
    lora = random_lora(base, rank=2, modules=2)
    with_lora = replace(good, lora=lora)
    lora_bytes = pack_to_bytes(with_lora)
    first_lora = "unet." + sorted(lora.tensors)[0]
    huge = {k: v.to(torch.float64) * 1e300 for k, v in good.embeddings.items()}
    int_lora = replace(lora, tensors={k: (v * 10).to(torch.int64) for k, v in lora.tensors.items()})
    return {
        "header nested 200k levels": (header_bytes("[" * 200_000 + "]" * 200_000), "file"),
        "header over the size bound": (header_bytes(" " * (MAX_HEADER_BYTES + 1)), "file"),
        "header not an object": (header_bytes("[1, 2]"), "file"),
        "header not UTF-8": (header_bytes(b'{"\xff": 1}'), "file"),
        "duplicate header keys": (header_bytes('{"a": {}, "a": {}}'), "file"),
        "entry without data_offsets": (edit_header(good_bytes, _drop_offsets), "embeddings.text_encoder"),
        "entry with negative shape": (
            edit_header(good_bytes, lambda h: {**h, "embeddings.text_encoder": {**h["embeddings.text_encoder"], "shape": [-2, 32]}}),
            "embeddings.text_encoder",
        ),
        "offsets not matching shape": (
            edit_header(good_bytes, lambda h: {**h, "embeddings.text_encoder": {**h["embeddings.text_encoder"], "shape": [1, 32]}}),
            "embeddings.text_encoder",
        ),
        "unknown dtype": (
            edit_header(good_bytes, lambda h: {**h, "embeddings.text_encoder": {**h["embeddings.text_encoder"], "dtype": "Q7"}}),
            "embeddings.text_encoder",
        ),
        "__metadata__ a list": (edit_header(good_bytes, _set("__metadata__", ["format"])), "__metadata__"),
        "metadata value not a string": (edit_header(good_bytes, _meta("name", 7)), "name"),
        "tokens an int": (raw_pack_bytes(good, metadata={"tokens": "7"}), "tokens"),
        "tokens a nested list": (raw_pack_bytes(good, metadata={"tokens": '[["<a>"], "<b>"]'}), "tokens"),
        "tokens nested deeply": (raw_pack_bytes(good, metadata={"tokens": "[" * 3000 + "]" * 3000}), "tokens"),
        "token with a newline": (raw_pack_bytes(good, metadata={"tokens": '["<x_0>\\nforged row", "<x_1>"]'}), "tokens"),
        "token with a space": (raw_pack_bytes(good, metadata={"tokens": '["<x 0>", "<x_1>"]'}), "tokens"),
        "class word with a control character": (raw_pack_bytes(good, metadata={"class_word": "do\x1bg"}), "class_word"),
        "class word of 50 KB": (raw_pack_bytes(good, metadata={"class_word": "d" * 50_000}), "class_word"),
        "class word over its limit": (raw_pack_bytes(good, metadata={"class_word": "d" * 65}), "class_word"),
        "10,000 tokens": (
            raw_pack_bytes(
                good,
                {"text_encoder": torch.zeros(10_000, 32)},
                {"tokens": json.dumps([f"<t{i}>" for i in range(10_000)])},
            ),
            "tokens",
        ),
        "more tokens than a prompt holds": (
            raw_pack_bytes(
                good,
                {"text_encoder": torch.zeros(MAX_TOKENS + 1, 32)},
                {"tokens": json.dumps([f"<t{i}>" for i in range(MAX_TOKENS + 1)])},
            ),
            "tokens",
        ),
        "float64 1e300 (inf as float32)": (raw_pack_bytes(good, huge), "embeddings.text_encoder"),
        "integer embeddings": (raw_pack_bytes(good, {"text_encoder": torch.ones(2, 32, dtype=torch.int64)}), "embeddings.text_encoder"),
        "integer LoRA tensors": (raw_pack_bytes(replace(good, lora=int_lora)), first_lora),
        "LoRA alpha nan": (raw_pack_bytes(with_lora, metadata={"lora_alpha": "nan"}), "lora_alpha"),
        "LoRA alpha inf": (raw_pack_bytes(with_lora, metadata={"lora_alpha": "inf"}), "lora_alpha"),
        "LoRA alpha -1e30": (raw_pack_bytes(with_lora, metadata={"lora_alpha": "-1e30"}), "lora_alpha"),
        "LoRA alpha 0": (raw_pack_bytes(with_lora, metadata={"lora_alpha": "0"}), "lora_alpha"),
        "LoRA alpha not a number": (raw_pack_bytes(with_lora, metadata={"lora_alpha": "a lot"}), "lora_alpha"),
        "LoRA rank not an integer": (raw_pack_bytes(with_lora, metadata={"lora_rank": "2.5"}), "lora_rank"),
        "LoRA rank of 5000 digits": (raw_pack_bytes(with_lora, metadata={"lora_rank": "9" * 5000}), "lora_rank"),
        "lora_set not the tensors' set": (raw_pack_bytes(with_lora, metadata={"lora_set": "0" * 16}), "lora_set"),
        "LoRA manifest without tensors": (raw_pack_bytes(good, metadata={"lora_rank": "2", "lora_alpha": "2"}), "lora_rank"),
        "bad trigger": (raw_pack_bytes(good, metadata={"trigger": "<a b>"}), "trigger"),
        "manifest value over the byte limit": (
            raw_pack_bytes(good, metadata={"extra": "x" * (MAX_MANIFEST_VALUE_BYTES + 1)}),
            "extra",
        ),
        "too many manifest entries": (raw_pack_bytes(good, metadata={f"k{i}": "v" for i in range(40)}), "__metadata__"),
        "unknown tensor": (
            header_bytes(
                json.dumps({"__metadata__": good.manifest(), "evil": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}),
                bytes(4),
            ),
            "evil",
        ),
        "LoRA truncated payload": (lora_bytes[:-3], "file"),
    }


CASES = [
    "header nested 200k levels", "header over the size bound", "header not an object", "header not UTF-8",
    "duplicate header keys", "entry without data_offsets", "entry with negative shape", "offsets not matching shape",
    "unknown dtype", "__metadata__ a list", "metadata value not a string", "tokens an int", "tokens a nested list",
    "tokens nested deeply", "token with a newline", "token with a space", "class word with a control character",
    "class word of 50 KB", "class word over its limit", "10,000 tokens", "more tokens than a prompt holds",
    "float64 1e300 (inf as float32)", "integer embeddings", "integer LoRA tensors", "LoRA alpha nan",
    "LoRA alpha inf", "LoRA alpha -1e30", "LoRA alpha 0", "LoRA alpha not a number", "LoRA rank not an integer",
    "LoRA rank of 5000 digits", "lora_set not the tensors' set", "LoRA manifest without tensors",
    "bad trigger", "manifest value over the byte limit",
    "too many manifest entries", "unknown tensor", "LoRA truncated payload",
]


@pytest.mark.parametrize("case", CASES)
def test_malformed_pack_is_a_pack_error_naming_the_field(case, tiny_base):
    data, field = _cases(tiny_base)[case]
    with pytest.raises(PackError) as refused:
        pack_from_bytes(data, source="upload")
    assert refused.value.field == field, str(refused.value)


def test_every_case_is_listed():
    assert len(CASES) == len(set(CASES))


def test_lora_alpha_and_dtype_are_checked_in_memory_too(tiny_base):
    lora = random_lora(tiny_base, rank=2, modules=1)
    for alpha in (math.nan, math.inf, -1.0, 0.0):
        with pytest.raises(PackError) as refused:
            replace(lora, alpha=alpha).validate()
        assert refused.value.field == "lora_alpha"
    with pytest.raises(PackError, match="floating point"):
        LoraWeights({k: v.to(torch.int32) for k, v in lora.tensors.items()}, rank=2, alpha=2.0).validate()


def test_many_lora_pairs_validate_in_one_pass(tiny_base):
    """4,000 rank-1 pairs (an 800 KB pack that took 24 s before): refused for the module names, once."""
    tensors = {}
    for index in range(4000):
        tensors[f"block{index}.to_q.lora_A.weight"] = torch.zeros(1, 4)
        tensors[f"block{index}.to_q.lora_B.weight"] = torch.zeros(4, 1)
    pack = replace(random_pack(tiny_base, "many"), lora=LoraWeights(tensors, rank=1, alpha=1.0))
    parsed = pack_from_bytes(pack_to_bytes(pack), max_bytes=1 << 24)
    assert len(parsed.lora.modules) == 4000
    with pytest.raises(PackError, match="not a LoRA target"):
        parsed.validate_for(tiny_base.spec)


def test_parsed_pack_holds_float32_and_equals_the_original(tiny_base):
    pack = replace(random_pack(tiny_base, "same", seed=2), lora=random_lora(tiny_base, rank=2, modules=3))
    half = replace(pack, embeddings={k: v.to(torch.float16) for k, v in pack.embeddings.items()})
    parsed = pack_from_bytes(raw_pack_bytes(half))
    assert all(table.dtype == torch.float32 for table in parsed.embeddings.values())
    assert same_content(pack_from_bytes(pack_to_bytes(pack)), pack)
    assert not same_content(parsed, pack)  # float16 rounding changed the embeddings


def test_manifest_is_read_from_the_header_alone(tiny_base, tmp_path):
    pack = replace(random_pack(tiny_base, "head"), lora=random_lora(tiny_base, rank=2, modules=1))
    path = write_pack(pack, tmp_path / "head.safetensors")
    assert read_manifest(path)["lora_set"] == pack.lora.set_id
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(PackError):
        read_manifest(tmp_path / "junk.safetensors")


def test_tokens_a_prompt_of_the_base_cannot_hold_are_refused_for_it(tiny_base):
    pack = random_pack(tiny_base, "long", num_tokens=MAX_TOKENS)
    pack.validate()
    short_window = replace(
        tiny_base.spec,
        text_encoders=tuple(replace(e, max_length=MAX_TOKENS) for e in tiny_base.spec.text_encoders),
    )
    with pytest.raises(PackError) as refused:
        replace(pack, embeddings=dict(pack.embeddings)).validate_for(short_window)
    assert refused.value.field == "tokens"
