"""Staging of an export: stages that passed survive a failed or killed export and are reused by the
next export with the same inputs; leftovers of other exports are removed; `OUT` is never half-written."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from clif_serve.contract import folder as layout
from clif_serve.errors import InputError
from clif_serve.export import exporter
from clif_serve.export.parity import ExportParityError
from clif_serve.export.recipe import load_recipe
from clif_serve.export.staging import RESUME_FILE, ExportStaging
from tests.helpers import interrupted_export

KEY = {"deployment": "d", "recipe": "r"}


def _stages_with_records(root):
    return sorted(p.name for p in root.iterdir() if (p / layout.STAGE_MANIFEST).is_file())


@pytest.fixture
def traced_stages(monkeypatch):
    """Record which stages an export traces; `fail` names a stage whose references are shifted by 1."""
    seen = {"traced": [], "fail": None}
    trace_stage = exporter.trace_stage

    def spy(stage, folder, recipe, targets=None):
        seen["traced"].append(stage.name)
        traced = trace_stage(stage, folder, recipe, targets)
        if stage.name == seen["fail"]:
            cases = tuple(replace(c, expected=tuple(e + 1 for e in c.expected)) for c in traced.reference.cases)
            traced.reference = replace(traced.reference, cases=cases)
        return traced

    monkeypatch.setattr(exporter, "trace_stage", spy)
    return seen


def test_a_failed_stage_keeps_the_passed_ones_and_the_next_export_redoes_only_it(
    tmp_path, tiny_export, tiny_base, traced_stages
):
    """An earlier export of the same inputs was interrupted after its UNet stages passed (their
    folders, records included, are those of the session's tiny export)."""
    out, partial = tmp_path / "out", tmp_path / ".out.partial"
    recipe = load_recipe("tiny")
    key = exporter.resume_key(tiny_base, recipe.deployment(tiny_base.spec), recipe, weight_map=False)
    interrupted_export(out, key, tiny_export, ("unet", "unet_lora"))

    traced_stages["fail"] = "vae_decoder"
    with pytest.raises(ExportParityError) as failed:
        exporter.export_model(tiny_base, out, recipe="tiny")
    assert "stage vae_decoder" in str(failed.value)
    assert "the stages that passed (text_encoder, unet, unet_lora) are kept" in str(failed.value)
    assert traced_stages["traced"] == ["text_encoder", "vae_decoder"]
    assert not out.exists() and _stages_with_records(partial) == ["text_encoder", "unet", "unet_lora"]

    traced_stages.update(traced=[], fail=None)
    export = exporter.export_model(tiny_base, out, recipe="tiny")
    assert traced_stages["traced"] == ["vae_decoder"]
    assert export.stage_record("unet") == tiny_export.stage_record("unet"), "reused as it passed"
    assert list(export.manifest["stages"]) == ["text_encoder", "unet", "unet_lora", "vae_decoder"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "nothing staged is left behind"
    assert not (out / RESUME_FILE).exists() and not (out / ".lock").exists()


def test_leftovers_of_other_and_killed_exports_are_removed(tmp_path):
    out = tmp_path / "build"
    for name in (".build-staging-k1ll3d_a", ".build-old-x7c2m0qz"):  # what older versions left when killed
        (tmp_path / name / "unet").mkdir(parents=True)
    partial = tmp_path / ".build.partial"
    (partial / "unet").mkdir(parents=True)
    (partial / "unet" / layout.STAGE_MANIFEST).write_text("{}")
    (partial / "unet" / layout.ONNX_FILE).write_text("")
    (partial / RESUME_FILE).write_text(json.dumps({"deployment": "other"}))
    (tmp_path / ".build-2-staging-a1b2c3d4").mkdir()  # the export into build-2's: not ours to remove
    with ExportStaging(out, KEY) as staging:
        assert staging.passed("unet") is None, "made from other inputs"
        assert sorted(p.name for p in partial.iterdir()) == [".lock", RESUME_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".build-2-staging-a1b2c3d4", ".build.partial"]


def test_a_stage_without_its_record_is_redone(tmp_path):
    out = tmp_path / "build"
    with ExportStaging(out, KEY) as staging:
        staging.fresh_stage_dir("unet")
        (staging.stage_dir("unet") / layout.ONNX_FILE).write_text("")  # killed before its parity check
        staging.fresh_stage_dir("vae_decoder")
        (staging.stage_dir("vae_decoder") / layout.ONNX_FILE).write_text("")
        staging.mark_passed("vae_decoder", {"stage": "vae_decoder"})
    with ExportStaging(out, KEY) as staging:
        assert staging.passed("unet") is None and not staging.stage_dir("unet").exists()
        assert staging.passed("vae_decoder") == {"stage": "vae_decoder"}


def test_a_second_export_into_the_same_folder_is_refused_while_one_runs(tmp_path):
    out = tmp_path / "build"
    with ExportStaging(out, KEY):
        with pytest.raises(InputError) as refused:
            ExportStaging(out, KEY).__enter__()
        assert refused.value.field == "out" and "another export" in refused.value.message
    with ExportStaging(out, KEY):  # the lock went with the first export
        pass


def test_the_finished_export_replaces_an_earlier_one(tmp_path):
    out = tmp_path / "build"
    out.mkdir()
    (out / layout.MANIFEST).write_text("old")
    with ExportStaging(out, KEY) as staging:
        (staging.root / layout.MANIFEST).write_text("new")
        staging.move_into_place()
    assert (out / layout.MANIFEST).read_text() == "new"
    assert sorted(p.name for p in out.iterdir()) == [layout.MANIFEST]
    assert [p.name for p in tmp_path.iterdir()] == ["build"]
