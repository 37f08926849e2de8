"""Concept pack v1: round trips, every validation case, and that refusals change nothing."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from clif_serve.concepts.pack import (
    FORMAT,
    pack_from_bytes,
    pack_to_bytes,
    read_pack,
    write_pack,
)
from clif_serve.concepts.registry import ConceptRegistry
from clif_serve.errors import PackError
from tests.helpers import random_lora, random_pack, raw_pack_bytes


def test_round_trip_keeps_manifest_and_tensors(tmp_path, tiny_base):
    pack = random_pack(tiny_base, "joe", "person", seed=1)
    path = write_pack(pack, tmp_path / "joe.safetensors")
    loaded = read_pack(path)
    assert loaded.manifest() == pack.manifest()
    assert loaded.tokens == ("<joe_0>", "<joe_1>")
    assert loaded.class_word == "person"
    assert torch.equal(loaded.embeddings["text_encoder"], pack.embeddings["text_encoder"])
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    metadata = json.loads(path.read_bytes()[8 : 8 + header_len])["__metadata__"]
    assert metadata["format"] == FORMAT and metadata["base_fingerprint"] == tiny_base.spec.fingerprint


def test_round_trip_with_lora(tiny_base):
    lora = random_lora(tiny_base, rank=4, alpha=8.0)
    pack = replace(random_pack(tiny_base, "rex"), lora=lora)
    loaded = pack_from_bytes(pack_to_bytes(pack))
    assert loaded.lora.rank == 4 and loaded.lora.alpha == 8.0
    assert loaded.lora.set_id == lora.set_id
    assert loaded.manifest()["lora_set"] == lora.set_id
    loaded.validate_for(tiny_base.spec)


def test_sdxl_pack_has_one_table_per_text_encoder(tiny_xl_base):
    pack = random_pack(tiny_xl_base, "ann")
    assert sorted(pack.embeddings) == ["text_encoder", "text_encoder_2"]
    pack_from_bytes(pack_to_bytes(pack)).validate_for(tiny_xl_base.spec)


def _bad_cases(tiny_base, tiny_xl_base):
    good = random_pack(tiny_base, "new", seed=9)
    good_bytes = pack_to_bytes(good)
    nan = good.embeddings["text_encoder"].clone()
    nan[0, 0] = float("nan")
    inf = good.embeddings["text_encoder"].clone()
    inf[1, 3] = float("inf")
    one_encoder_xl = replace(
        random_pack(tiny_base, "new", seed=3), base_fingerprint=tiny_xl_base.spec.fingerprint
    )
    corrupt = bytearray(good_bytes)
    corrupt[10:20] = b"\xff" * 10
    return {
        "wrong hidden size": (
            raw_pack_bytes(good, {"text_encoder": torch.zeros(2, 16)}),
            "embeddings.text_encoder",
            "hidden size 16",
            "spec",
        ),
        "wrong number of text encoders": (pack_to_bytes(one_encoder_xl), "embeddings", "the base model has 2", "xl"),
        "NaN": (raw_pack_bytes(good, {"text_encoder": nan}), "embeddings.text_encoder", "NaN", "spec"),
        "Inf": (raw_pack_bytes(good, {"text_encoder": inf}), "embeddings.text_encoder", "Inf", "spec"),
        "truncated": (good_bytes[: len(good_bytes) - 40], "file", "truncated", "spec"),
        "corrupt": (bytes(corrupt), "file", "not a safetensors file", "spec"),
        "not safetensors": (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "file", "not a safetensors file", "spec"),
        "fingerprint mismatch": (
            pack_to_bytes(replace(good, base_fingerprint="0" * 24)),
            "base_fingerprint",
            "was made for base",
            "spec",
        ),
        "duplicate name": (pack_to_bytes(replace(good, name="a", trigger="<other>")), "name", "already loaded", "spec"),
        "duplicate trigger": (pack_to_bytes(replace(good, trigger="<b>")), "trigger", "already used", "spec"),
        "path in name": (raw_pack_bytes(good, metadata={"name": "../evil"}), "name", "must match", "spec"),
        "control character in name": (
            raw_pack_bytes(good, metadata={"name": "bad\x00name"}),
            "name",
            "must match",
            "spec",
        ),
        "name too long": (
            raw_pack_bytes(good, metadata={"name": "x" * 65}),
            "name",
            "must match",
            "spec",
        ),
    }


CASES = [
    "wrong hidden size",
    "wrong number of text encoders",
    "NaN",
    "Inf",
    "truncated",
    "corrupt",
    "not safetensors",
    "fingerprint mismatch",
    "duplicate name",
    "duplicate trigger",
    "path in name",
    "control character in name",
    "name too long",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_pack_is_refused_and_nothing_changes(case, tiny_base, tiny_xl_base):
    data, field, message, which = _bad_cases(tiny_base, tiny_xl_base)[case]
    base = tiny_xl_base if which == "xl" else tiny_base
    registry = ConceptRegistry(base.spec, [random_pack(base, "a", seed=1), random_pack(base, "b", seed=2)])
    before = {name: registry.get(name).embeddings for name in registry.names()}
    with pytest.raises(PackError) as error:
        registry.add(pack_from_bytes(data, source="upload"))
    assert error.value.field == field, str(error.value)
    assert message in str(error.value)
    assert registry.names() == sorted(before)
    for name, tables in before.items():
        assert registry.get(name).embeddings is tables


def test_file_over_size_limit_is_refused_before_reading(tmp_path, tiny_base):
    path = write_pack(random_pack(tiny_base, "big"), tmp_path / "big.safetensors")
    with pytest.raises(PackError, match="over the 100-byte limit") as error:
        read_pack(path, max_bytes=100)
    assert error.value.field == "file"
    with pytest.raises(PackError, match="over the"):
        pack_from_bytes(path.read_bytes(), max_bytes=100)


def test_what_is_no_regular_file_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "fifo.safetensors")  # opening a FIFO for reading would wait for a writer
    (tmp_path / "folder.safetensors").mkdir()
    for name in ("fifo", "folder"):
        with pytest.raises(PackError, match="not a regular file") as error:
            read_pack(tmp_path / f"{name}.safetensors")
        assert error.value.field == "file"
    with pytest.raises(PackError, match="no such file"):
        read_pack(tmp_path / "absent.safetensors")


def test_safetensors_without_manifest_is_not_a_pack(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(PackError, match="not a clif-serve concept pack"):
        read_pack(path)


def test_lora_for_a_module_the_unet_lacks_is_refused(tiny_base):
    lora = random_lora(tiny_base, rank=2, modules=1)
    (module,) = lora.modules
    renamed = {k.replace(module, module + "_nope"): v for k, v in lora.tensors.items()}
    pack = replace(random_pack(tiny_base, "x"), lora=replace(lora, tensors=renamed))
    with pytest.raises(PackError, match="not a LoRA target"):
        pack.validate_for(tiny_base.spec)


def test_lora_rank_mismatch_is_refused(tiny_base):
    lora = replace(random_lora(tiny_base, rank=2, modules=2), rank=3)
    with pytest.raises(PackError, match="do not match lora_rank 3"):
        replace(random_pack(tiny_base, "x"), lora=lora).validate()


def test_registry_remove_and_replace(tiny_base):
    registry = ConceptRegistry(tiny_base.spec, [random_pack(tiny_base, "a", seed=1)])
    newer = random_pack(tiny_base, "a", seed=5)
    registry.add(newer, replace=True)
    assert registry.get("a") is newer
    snapshot = registry.snapshot()
    registry.remove("a")
    assert "<a>" in snapshot and len(registry) == 0, "snapshots taken before a removal keep working"
    with pytest.raises(PackError, match="no concept named 'a'"):
        registry.remove("a")
