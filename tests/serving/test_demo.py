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
