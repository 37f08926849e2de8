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
from clif_serve.serving.concept_control import ConceptControl, PackPolicy, resolve_store
from clif_serve.serving.protocol import ConceptsReply, SkippedPack

# A deployment without unet_lora: packs carrying a LoRA have no route.
NO_LORA_STAGE = LoraRouting(merged_lora=None, has_unet_lora=False, adapters=False)
ADAPTERS = LoraRouting(merged_lora=None, has_unet_lora=True, adapters=True)


def control_for(folder, spec, routing=NO_LORA_STAGE, **limits) -> ConceptControl:
    """A ConceptControl on `folder` with a policy like the tiny export's (32 table rows, ranks up to 16)."""
    values = {"max_tokens": 32, "max_lora_rank": 16, "max_pack_bytes": 1 << 20} | limits
    return ConceptControl(folder, PackPolicy(spec, routing, **values))


def read_version(folder):
    return ConceptStore(folder).version()


def _files(folder):
    return sorted((path.name, path.read_bytes()) for path in folder.iterdir() if path.name != ".lock")


def test_hot_load_is_seen_by_every_sync_and_by_a_restart(tiny_base, packs, tmp_path):
    control = control_for(tmp_path, tiny_base.spec)
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
    control = control_for(tmp_path, tiny_base.spec)
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
    control = control_for(tmp_path, tiny_base.spec)
    control.add(pack_to_bytes(packs["joe"]))
    before, version = _files(tmp_path), read_version(tmp_path)
    lora_pack = pack_to_bytes(packs["ann_lora"])  # no unet_lora stage in this control
    bad = [
        ("add", {"pack": b"not a pack"}, "file"),
        ("add", {"pack": pack_to_bytes(replace(packs["joe"], class_word="cat"))}, "name"),  # another joe
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


class _RemovedAfterListing(ConceptStore):
    """A store whose `entries()` lets another writer remove `name` right after listing it (the CI race)."""

    def __init__(self, folder, name):
        super().__init__(folder)
        self.name = name

    def entries(self):
        listed = super().entries()
        if self.name in listed:
            ConceptStore(self.folder).delete(self.name)
        return listed


def test_a_pack_removed_between_listing_and_reading_is_gone_not_an_error(tiny_base, packs, tmp_path):
    """A request's refresh must not fail because another client removed a concept meanwhile."""
    ConceptStore(tmp_path).save(packs["joe"])
    ConceptStore(tmp_path).save(packs["rex"])
    sync = StoreSync(_RemovedAfterListing(tmp_path, "rex"), tiny_base.spec)
    assert sync.refresh()
    assert sync.registry.names() == ["joe"] and sync.skipped == {}
    assert sync.refresh() and sync.registry.names() == ["joe"]  # the removal's version bump: listed again


def test_a_pack_refused_for_another_packs_trigger_loads_once_that_pack_is_gone(tiny_base, packs, tmp_path):
    """A file dropped in by hand with a trigger the store already serves is skipped, not lost for good."""
    store = ConceptStore(tmp_path)
    store.save(packs["joe"])
    sync = StoreSync(store, tiny_base.spec)
    sync.refresh()
    write_pack(replace(packs["rex"], trigger=packs["joe"].trigger), tmp_path / "rex.safetensors")
    assert sync.refresh() and "trigger" in sync.skipped["rex"] and sync.registry.names() == ["joe"]
    store.delete("joe")
    assert sync.refresh() and sync.registry.names() == ["rex"] and sync.skipped == {}


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
    control = control_for(tmp_path, tiny_base.spec)
    control.add(pack_to_bytes(packs["joe"]))
    assert read_version(tmp_path) == "1" and StoreSync(tmp_path, tiny_base.spec).refresh()


def test_a_hot_load_validates_the_pack_once(tiny_base, packs, tmp_path, monkeypatch):
    import clif_serve.concepts.pack as pack_module

    data = pack_to_bytes(packs["max"])
    runs = []
    real = pack_module.validate_name
    monkeypatch.setattr(pack_module, "validate_name", lambda name: runs.append(name) or real(name))
    control_for(tmp_path, tiny_base.spec).add(data)
    assert runs == ["max"], "parsing, the registry and the store share one validation"


def test_adding_the_same_pack_again_changes_nothing(tiny_base, packs, tmp_path):
    control = control_for(tmp_path, tiny_base.spec)
    first = control.handle("add", pack=pack_to_bytes(packs["joe"]))
    before = _files(tmp_path)
    again = control.handle("add", pack=pack_to_bytes(packs["joe"]))  # a retry after a lost answer
    assert first.changed and not again.changed and again.concept == "joe"
    assert again.version == first.version and _files(tmp_path) == before
    assert control.handle("add", pack=pack_to_bytes(packs["joe"]), replace=True).changed is False


def test_skipped_packs_are_listed_with_the_reason_and_removable(tiny_base, packs, tmp_path):
    (tmp_path / "broken.safetensors").write_bytes(pack_to_bytes(packs["kim"])[:-9])  # truncated
    write_pack(packs["rex"], tmp_path / "other-name.safetensors")
    control = control_for(tmp_path, tiny_base.spec)
    listing = control.handle("list")
    assert listing.concepts == ()
    reasons = {entry.name: entry.reason for entry in listing.skipped}
    assert "truncated" in reasons["broken"] and "holds concept 'rex'" in reasons["other-name"]
    with pytest.raises(PackError) as refused:  # a skipped pack's name is taken until it is replaced or removed
        control.add(pack_to_bytes(replace(packs["kim"], name="broken", trigger="<broken>")))
    assert refused.value.field == "name" and "cannot serve" in refused.value.message
    assert control.handle("remove", name="broken").skipped == (SkippedPack("other-name", reasons["other-name"]),)
    assert not (tmp_path / "broken.safetensors").exists()
    control.handle("remove", name="other-name")
    assert control.handle("list").skipped == () and _files(tmp_path) == [(".version", b"2")]


def test_the_store_holds_at_most_its_capacity(tiny_base, packs, tmp_path):
    control = control_for(tmp_path, tiny_base.spec, max_concepts=2)
    control.add(pack_to_bytes(packs["joe"]))
    control.add(pack_to_bytes(packs["rex"]))
    with pytest.raises(PackError) as refused:
        control.add(pack_to_bytes(packs["kim"]))
    assert refused.value.field == "store" and "capacity" in refused.value.message
    control.add(pack_to_bytes(replace(packs["joe"], class_word="cat")), replace=True)  # replacing is no new concept
    control.remove("rex")
    control.add(pack_to_bytes(packs["kim"]))


def test_packs_the_deployment_cannot_serve_are_refused(tiny_base, packs, tmp_path):
    from tests.helpers import random_lora, random_pack

    control = control_for(tmp_path, tiny_base.spec, ADAPTERS, max_tokens=4, max_lora_rank=2)
    with pytest.raises(PackError) as refused:  # more tokens than the served concept table has rows
        control.add(pack_to_bytes(random_pack(tiny_base, "long", num_tokens=5)))
    assert refused.value.field == "tokens"
    with pytest.raises(PackError) as refused:  # rank 4 > the exported unet_lora's maximum
        control.add(pack_to_bytes(replace(packs["joe"], lora=random_lora(tiny_base, rank=4, modules=1))))
    assert refused.value.field == "lora_rank"
    control.add(pack_to_bytes(replace(packs["joe"], lora=random_lora(tiny_base, rank=2, modules=1))))
    assert _files(tmp_path)[-1][0] == "joe.safetensors"


def test_readers_use_the_size_limit_of_the_hot_load(tiny_base, packs, tmp_path):
    ConceptStore(tmp_path).save(packs["joe"])
    size = (tmp_path / "joe.safetensors").stat().st_size
    strict = StoreSync(tmp_path, tiny_base.spec, max_pack_bytes=size - 1)
    strict.refresh()
    assert strict.registry.names() == [] and "limit" in strict.skipped["joe"]
    fitting = StoreSync(tmp_path, tiny_base.spec, max_pack_bytes=size)
    fitting.refresh()
    assert fitting.registry.names() == ["joe"]


def test_a_pack_renamed_in_without_a_version_bump_is_seen(tiny_base, packs, tmp_path):
    """What a writer killed between its rename and its version bump leaves: readers see it anyway."""
    reader = StoreSync(tmp_path, tiny_base.spec)
    reader.refresh()
    write_pack(packs["max"], tmp_path / "max.safetensors")  # no ConceptStore, no bump
    assert read_version(tmp_path) == "0"
    assert reader.refresh() and reader.registry.names() == ["max"]


def test_a_version_file_of_garbage_bytes_is_recovered(tiny_base, packs, tmp_path):
    (tmp_path / ".version").write_bytes(b"\xff\xfe\x00")
    reader = StoreSync(tmp_path, tiny_base.spec)
    assert reader.refresh()
    control_for(tmp_path, tiny_base.spec).add(pack_to_bytes(packs["joe"]))
    assert read_version(tmp_path) == "1" and reader.refresh() and reader.registry.names() == ["joe"]


PIN_IN_ANOTHER_PROCESS = """
import sys
from clif_serve.concepts.pack import read_pack
from clif_serve.concepts.store import ConceptStore
pin = ConceptStore(sys.argv[1]).pin_lora(read_pack(sys.argv[2]).lora)
print("pinned", flush=True)
sys.stdin.readline()
"""


def test_a_pinned_lora_set_outlives_the_removal_of_its_pack(tiny_base, packs, tmp_path):
    """A request pins its LoRA set (any process); removal and replacement of the pack leave it loadable."""
    import subprocess
    import sys

    from tests.helpers import random_lora

    ann = packs["ann_lora"]
    store = ConceptStore(tmp_path / "store")
    store.save(ann)
    pin = store.pin_lora(ann.lora)  # what the pipeline does when a request starts
    store.save(replace(ann, lora=random_lora(tiny_base, seed=8)))  # replaced by another LoRA set
    store.delete("ann_lora")
    assert store.lora_pinned(ann.lora.set_id)
    assert store.read_lora(ann.lora.set_id).set_id == ann.lora.set_id  # the stage can still build the adapter
    pin.release()
    assert store.collect_loras() == [ann.lora.set_id]
    with pytest.raises(PackError) as gone:
        store.read_lora(ann.lora.set_id)
    assert gone.value.field == "lora_id"

    pack_file = write_pack(ann, tmp_path / "ann.safetensors")
    store.save(ann)
    child = subprocess.Popen(
        [sys.executable, "-c", PIN_IN_ANOTHER_PROCESS, str(store.folder), str(pack_file)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout.readline().strip() == "pinned"
        store.delete("ann_lora")
        assert store.collect_loras() == [] and store.lora_pinned(ann.lora.set_id)
    finally:
        child.communicate("done\n", timeout=60)
    assert store.collect_loras() == [ann.lora.set_id], "the pin died with its process"
    assert sorted(p.name for p in (store.folder / "loras").iterdir()) == []
