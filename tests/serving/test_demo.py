"""The README's main job (scripts/demo.sh runs clif_serve.demo) works end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

from clif_serve import demo


def test_demo_serves_hot_loads_and_summarises(tiny_export, tiny_bank_export, tmp_path):
    shutil.copytree(tiny_export.root, tmp_path / "export")  # reused instead of exporting again
    shutil.copytree(tiny_bank_export.root, tmp_path / "bank" / "export")
    figures = demo.main(
        ["--workdir", str(tmp_path), "--steps", "2", "--requests", "2", "--json", str(tmp_path / "figures.json")]
    )
    for name in ("joe-and-rex.png", "joe-left-rex-right.png", "ann.png"):
        image = np.asarray(Image.open(tmp_path / name))
        assert image.shape == (64, 64, 3) and image.std() > 0
    regional = np.asarray(Image.open(tmp_path / "joe-left-rex-right.png"))
    assert np.abs(regional.astype(int) - np.asarray(Image.open(tmp_path / "joe-and-rex.png"))).max() > 0
    saved = json.loads((tmp_path / "figures.json").read_text())
    assert saved["served"]["count"] == saved["in_process_onnxruntime"]["count"] == 2
    assert saved["hot_load_ms"] > 0 and saved["served_over_onnxruntime_p50"] > 0
    assert set(saved["served_breakdown_ms"]) == {"clif_pipeline", "text_encoder", "unet", "vae_decoder"}
    assert figures["export_s"] < 5, "the export in the workdir must be reused, not redone"
    bank = saved["lora_bank"]
    assert len(set(bank["lora_sets"])) == 2 and bank["unet_bank_executions"] > 0
    assert 0 <= bank["shared_executions"] <= bank["unet_bank_executions"]


def test_an_export_of_another_base_or_version_is_not_reused(tiny_export, tiny_base, tmp_path):
    from clif_serve.contract.folder import MANIFEST
    from clif_serve.local import reusable_export

    export = shutil.copytree(tiny_export.root, tmp_path / "export")
    assert reusable_export(export, tiny_base.spec).root == export
    manifest = json.loads((export / MANIFEST).read_text())
    manifest["deployment"]["model_spec"]["fingerprint"] = "0" * 24
    (export / MANIFEST).write_text(json.dumps(manifest))
    assert reusable_export(export, tiny_base.spec) is None, "an export of another base is made again"
    (export / MANIFEST).write_text(json.dumps({**manifest, "format_version": 1}))
    assert reusable_export(export, tiny_base.spec) is None, "so is one of an older clif-serve"
    assert reusable_export(tmp_path / "nothing", tiny_base.spec) is None
