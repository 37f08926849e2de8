"""The export folder: manifest, stage signatures, dynamic axes, parity figures, failure modes."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
import torch

from clif_serve.contract import folder as layout
from clif_serve.contract.stages import stage_signature
from clif_serve.export.parity import ExportParityError, check_reference, reference_outputs
from clif_serve.export.recipe import load_recipe
from clif_serve.export.traces import text_encoder_trace


def test_manifest_describes_every_stage(tiny_export, tiny_base):
    manifest = tiny_export.manifest
    deployment = manifest["deployment"]
    assert deployment["model_spec"]["fingerprint"] == tiny_base.spec.fingerprint
    assert manifest["recipe"]["name"] == "tiny"
    assert (deployment["height"], deployment["width"]) == ([32, 64, 128], [32, 64, 128])
    assert deployment["model_spec"]["image_multiple"] == 4
    assert tiny_export.deployment.stages == ("text_encoder", "unet", "unet_lora", "vae_decoder")
    assert list(manifest["stages"]) == ["text_encoder", "unet", "unet_lora", "vae_decoder"]
    for name, stage in manifest["stages"].items():
        assert stage["opset"] == 18 and stage["base_fingerprint"] == tiny_base.spec.fingerprint
        parity = stage["parity"]
        assert 0 <= parity["max_abs_diff"] < 1e-4, name
        assert parity["tolerance_rule"] == "4 u sqrt(sum n)"
        assert 0 <= parity["max_rel_diff"] < parity["tolerance"] < 1e-3, name
        for case in parity["cases"]:
            reductions = case["reductions"]
            assert case["tolerance"] == pytest.approx(4 * 2**-24 * reductions["summed_length"] ** 0.5), name
            assert reductions["reductions"] > 0 and reductions["longest"] <= reductions["summed_length"]
        assert stage["export_seconds"] > 0
        assert json.loads((tiny_export.stage_dir(name) / layout.STAGE_MANIFEST).read_text()) == stage
    text = manifest["stages"]["text_encoder"]
    assert [i["name"] for i in text["inputs"]] == ["input_ids", "concept_table"]
    assert text["inputs"][1]["shape"] == ["batch", "concept_rows", 32]
    assert [o["name"] for o in text["outputs"]] == ["hidden_states", "pooled"]
    unet = manifest["stages"]["unet"]
    assert unet["dynamic_axes"]["sample"] == {"0": "batch", "2": "2*height_units", "3": "2*width_units"}
    assert unet["merged_lora"] is None
    assert "weight_map" not in unet, "an ordinary export hashes no weights"
    lora = manifest["stages"]["unet_lora"]
    assert [i["name"] for i in lora["inputs"]] == ["sample", "timestep", "encoder_hidden_states"]
    assert len(lora["lora_inputs"]) == 2 * len(tiny_base.spec.lora_targets)


def test_sdxl_export_has_both_text_encoders_and_added_conditioning(tiny_xl_export):
    stages = tiny_xl_export.manifest["stages"]
    assert list(stages) == ["text_encoder", "text_encoder_2", "unet", "unet_lora", "vae_decoder"]
    expected = ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"]
    assert [i["name"] for i in stages["unet"]["inputs"]] == expected
    assert list(stage_signature(tiny_xl_export.spec, "unet").input_names) == expected
    assert stages["unet"]["inputs"][3]["shape"] == ["batch", 32]
    assert stages["unet"]["inputs"][4]["shape"] == ["batch", 6]
    assert stages["text_encoder_2"]["outputs"][1]["shape"] == ["batch", 32]
    for stage in stages.values():
        assert stage["parity"]["max_abs_diff"] < 1e-4


def test_exported_tokenizers_match_the_base(tiny_xl_export, tiny_xl_base):
    prompt = "A photo of a dog, walking on the beach!"
    for exported, original in zip(tiny_xl_export.tokenizers(), tiny_xl_base.tokenizers, strict=True):
        assert (
            exported(prompt, padding="max_length").input_ids
            == original(prompt, padding="max_length").input_ids
        )


@pytest.fixture(scope="module")
def sessions(tiny_export):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return {
        stage: ort.InferenceSession(str(tiny_export.onnx_path(stage)), options)
        for stage in ("unet", "vae_decoder")
    }


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 32, 32), (3, 128, 96), (8, 64, 128)])
def test_unet_and_vae_accept_the_recipe_range(sessions, tiny_base, batch, height, width):
    unet, vae = sessions["unet"], sessions["vae_decoder"]
    latent = torch.randn(batch, 4, height // 2, width // 2)
    timestep = torch.full((batch,), 500.0)
    hidden = torch.randn(batch, 77, 32)
    noise = unet.run(
        None,
        {"sample": latent.numpy(), "timestep": timestep.numpy(), "encoder_hidden_states": hidden.numpy()},
    )[0]
    with torch.inference_mode():
        expected = tiny_base.unet(latent, timestep, encoder_hidden_states=hidden).sample
    assert np.abs(noise - expected.numpy()).max() < 1e-4
    image = vae.run(None, {"latent_sample": latent.numpy()})[0]
    assert image.shape == (batch, 3, height, width)


def test_parity_check_refuses_a_stage_that_disagrees(tiny_export, tiny_base):
    stage = text_encoder_trace(tiny_base, 0, load_recipe("tiny").deployment(tiny_base.spec))
    session = ort.InferenceSession(str(tiny_export.onnx_path("text_encoder")))
    figures = check_reference(reference_outputs(stage), session)
    assert figures["max_abs_diff"] < 1e-4 and len(figures["cases"]) == 2
    assert figures["max_rel_diff"] < figures["tolerance"]

    class Shifted(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, ids, table):
            hidden, pooled = self.inner(ids, table)
            return hidden * 1.001, pooled

    with pytest.raises(ExportParityError, match="text_encoder.*hidden_states.*above the tolerance.*refused"):
        check_reference(reference_outputs(replace(stage, module=Shifted(stage.module))), session)
    # A recipe's fixed tolerance replaces the derived one.
    assert check_reference(reference_outputs(stage, 0.5), session)["tolerance"] == 0.5


def test_cli_errors_name_the_option_and_write_nothing(tmp_path, capsys):
    from clif_serve.cli import main

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("x")
    assert main(["export", "--model", "tiny", "--out", str(occupied)]) == 2
    assert "out:" in capsys.readouterr().err and [p.name for p in occupied.iterdir()] == ["keep.txt"]
    assert main(["export", "--model", "tiny", "--out", str(occupied), "--overwrite"]) == 2
    assert "not an export folder" in capsys.readouterr().err and [p.name for p in occupied.iterdir()] == [
        "keep.txt"
    ]
    assert main(["export", "--model", "tiny", "--out", str(tmp_path / "a"), "--recipe", "nope"]) == 2
    assert "recipe: 'nope' is neither a file nor a known recipe" in capsys.readouterr().err
    assert main(["export", "--model", "tiny", "--out", str(tmp_path / "b"), "--tensorrt"]) == 2
    assert "tensorrt" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied"]


def test_merged_lora_export(tiny_xl_export, xl_packs):
    stage = tiny_xl_export.manifest["stages"]["unet"]
    assert stage["merged_lora"] == tiny_xl_export.deployment.merged_lora == xl_packs["ann"].lora.set_id
    for case in stage["parity"]["cases"]:
        figures = case["outputs"]["noise_pred"]
        assert figures["max_abs_diff"] <= 1e-3 * figures["scale"]


def test_merging_a_pack_without_lora_is_refused(tmp_path, tiny_base, lora_packs):
    from clif_serve.errors import InputError
    from clif_serve.export.exporter import export_model

    with pytest.raises(InputError, match="merge_lora: concept pack 'joe' carries no LoRA"):
        export_model(tiny_base, tmp_path / "out", recipe="tiny", merge_lora=lora_packs["joe"])
    assert list(tmp_path.iterdir()) == []
