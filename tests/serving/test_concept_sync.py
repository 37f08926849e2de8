"""The concept store as served: validated hot-load/remove, replicas and restarts see the same set."""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest

from clif_serve.concepts.pack import pack_to_bytes, write_pack
from clif_serve.concepts.store import ConceptStore
from clif_serve.concepts.sync import StoreSync
from clif_serve.contract.routing import LoraRouting
from clif_serve.errors import InputError, PackError
from clif_serve.serving.concept_control import ConceptControl, resolve_store
from clif_serve.serving.protocol import ConceptsReply

# A deployment without unet_lora: packs carrying a LoRA have no route.
NO_LORA_STAGE = LoraRouting(merged_lora=None, has_unet_lora=False, adapters=False)


def read_version(folder):
    return ConceptStore(folder).version()


def _files(folder):
    return sorted((path.name, path.read_bytes()) for path in folder.iterdir() if path.name != ".lock")


def test_hot_load_is_seen_by_every_sync_and_by_a_restart(tiny_base, packs, tmp_path):
    control = ConceptControl(tmp_path, tiny_base.spec, 1 << 20, NO_LORA_STAGE)
    replica = StoreSync(tmp_path, tiny_base.spec)
    assert replica.refresh() and replica.registry.names() == []
    result = control.handle("add", pack_base64=base64.b64encode(pack_to_bytes(packs["joe"])).decode())
    assert result.concept == "joe" and [c.name for c in result.concepts] == ["joe"]
    assert ConceptsReply.from_json(result.to_json()) == result
    assert replica.refresh() and replica.registry.names() == ["joe"]
    assert not replica.refresh()  # nothing changed: one read of .version, no pack read
    control.add(pack_to_bytes(packs["rex"]))
    control.remove("joe")
    assert replica.refresh() and replica.registry.names() == ["rex"]
    restarted = StoreSync(tmp_path, tiny_base.spec)
    restarted.refresh()
    assert restarted.registry.names() == ["rex"]
    assert (
        restarted.registry.get("rex")
        .embeddings["text_encoder"]
        .equal(packs["rex"].embeddings["text_encoder"])
    )


def test_replace_swaps_the_pack_for_the_next_refresh(tiny_base, packs, tmp_path):
    control = ConceptControl(tmp_path, tiny_base.spec, 1 << 20, NO_LORA_STAGE)
    replica = StoreSync(tmp_path, tiny_base.spec)
    control.add(pack_to_bytes(packs["joe"]))
    replica.refresh()
    new = replace(packs["rex"], name="joe", trigger="<joe>", tokens=("<joe_0>", "<joe_1>"))
    with pytest.raises(PackError) as refused:
        control.add(pack_to_bytes(new))
    assert refused.value.field == "name"
    control.add(pack_to_bytes(new), replace=True)
    replica.refresh()
    assert replica.registry.get("joe").embeddings["text_encoder"].equal(new.embeddings["text_encoder"])


def test_refused_changes_leave_the_store_untouched(tiny_base, tiny_xl_base, packs, tmp_path):
    control = ConceptControl(tmp_path, tiny_base.spec, 1 << 20, NO_LORA_STAGE)
    control.add(pack_to_bytes(packs["joe"]))
    before, version = _files(tmp_path), read_version(tmp_path)
    lora_pack = pack_to_bytes(packs["ann_lora"])  # no unet_lora stage in this control
    bad = [
        ("add", {"pack": b"not a pack"}, "file"),
        ("add", {"pack": pack_to_bytes(packs["joe"])}, "name"),
        ("add", {"pack": pack_to_bytes(replace(packs["rex"], trigger="<joe>"))}, "trigger"),
        (
            "add",
            {"pack": pack_to_bytes(replace(packs["rex"], base_fingerprint="0" * 24))},
            "base_fingerprint",
        ),
        ("add", {"pack": lora_pack}, "unet"),
        ("add", {}, "pack"),
        ("add", {"pack": b"x", "pack_base64": "eA=="}, "pack"),
        ("add", {"pack_base64": "not base64!"}, "pack_base64"),
        ("remove", {"name": "nobody"}, "name"),
        ("remove", {"name": "../joe"}, "name"),
        ("remove", {}, "name"),
        ("rename", {}, "action"),
    ]
    for action, values, field in bad:
        with pytest.raises(InputError) as refused:
            control.handle(action, **values)
        assert refused.value.field == field, (action, values.keys(), refused.value)
    assert _files(tmp_path) == before and read_version(tmp_path) == version


def test_bad_files_in_the_store_are_skipped_not_fatal(tiny_base, packs, tmp_path):
    write_pack(packs["joe"], tmp_path / "joe.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 3)
    write_pack(packs["rex"], tmp_path / "other-name.safetensors")  # file name must be the concept name
    sync = StoreSync(tmp_path, tiny_base.spec)
    sync.refresh()
    assert sync.registry.names() == ["joe"]


def test_store_location(tiny_base, tmp_path, monkeypatch):
    monkeypatch.delenv("CLIF_SERVE_CONCEPT_STORE", raising=False)
    assert resolve_store("concepts", tmp_path, tiny_base.spec) == (tmp_path / "concepts").resolve()
    assert resolve_store("", tmp_path, tiny_base.spec).name == tiny_base.spec.fingerprint
    monkeypatch.setenv("CLIF_SERVE_CONCEPT_STORE", str(tmp_path / "env"))
    assert resolve_store("concepts", tmp_path, tiny_base.spec) == tmp_path / "env"


def test_writes_through_concept_store_are_seen_by_running_readers(tiny_base, packs, tmp_path):
    """Training into a store folder, or a script, writes through ConceptStore: the next refresh sees it."""
    reader = StoreSync(tmp_path, tiny_base.spec)
    reader.refresh()
    writer = ConceptStore(tmp_path)
    writer.save(packs["kim"])
    assert reader.refresh() and reader.registry.names() == ["kim"]
    writer.delete("kim")
    assert reader.refresh() and reader.registry.names() == []


def test_opening_a_store_removes_what_a_crashed_writer_left(tiny_base, packs, tmp_path):
    ConceptStore(tmp_path).save(packs["joe"])
    (tmp_path / ".joe.safetensors.abc123").write_bytes(b"half a pack")  # temp file of a killed write
    (tmp_path / ".version.xyz").write_text("7")
    store = ConceptStore(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", ".version", "joe.safetensors"]
    assert store.version() == "1"


def test_a_garbage_version_file_is_recovered(tiny_base, packs, tmp_path):
    (tmp_path / ".version").write_text("\x00garbage")
    control = ConceptControl(tmp_path, tiny_base.spec, 1 << 20, NO_LORA_STAGE)
    control.add(pack_to_bytes(packs["joe"]))
    assert read_version(tmp_path) == "1" and StoreSync(tmp_path, tiny_base.spec).refresh()


def test_a_hot_load_validates_the_pack_once(tiny_base, packs, tmp_path, monkeypatch):
    import clif_serve.concepts.pack as pack_module

    data = pack_to_bytes(packs["max"])
    runs = []
    real = pack_module.validate_name
    monkeypatch.setattr(pack_module, "validate_name", lambda name: runs.append(name) or real(name))
    ConceptControl(tmp_path, tiny_base.spec, 1 << 20, NO_LORA_STAGE).add(data)
    assert runs == ["max"], "parsing, the registry and the store share one validation"
