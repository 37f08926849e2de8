"""The README's main job (scripts/demo.sh runs clif_serve.serving.demo) works end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

from clif_serve.serving import demo


def test_demo_serves_hot_loads_and_summarises(tiny_export, tmp_path):
    shutil.copytree(tiny_export.root, tmp_path / "export")  # reused instead of exporting again
    figures = demo.main(
        ["--workdir", str(tmp_path), "--steps", "2", "--requests", "2", "--json", str(tmp_path / "figures.json")]
    )
    for name in ("joe-and-rex.png", "ann.png"):
        image = np.asarray(Image.open(tmp_path / name))
        assert image.shape == (64, 64, 3) and image.std() > 0
    saved = json.loads((tmp_path / "figures.json").read_text())
    assert saved["served"]["count"] == saved["in_process_onnxruntime"]["count"] == 2
    assert saved["hot_load_ms"] > 0 and saved["served_over_onnxruntime_p50"] > 0
    assert set(saved["served_breakdown_ms"]) == {"clif_pipeline", "text_encoder", "unet", "vae_decoder"}
    assert figures["export_s"] < 5, "the export in the workdir must be reused, not redone"


def test_an_export_of_another_base_is_not_reused(tiny_export, tmp_path):
    from clif_serve.export.layout import MANIFEST
    from clif_serve.serving.local import prepare_export

    shutil.copytree(tiny_export.root, tmp_path / "export")
    manifest = json.loads((tmp_path / "export" / MANIFEST).read_text())
    assert prepare_export("tiny", tmp_path / "export").spec.fingerprint == manifest["model_spec"]["fingerprint"]
    manifest["model_spec"]["fingerprint"] = "0" * 24
    (tmp_path / "export" / MANIFEST).write_text(json.dumps(manifest))
    folder = prepare_export("tiny", tmp_path / "export")
    assert folder.spec.fingerprint == tiny_export.spec.fingerprint, "a stale export is made again"
