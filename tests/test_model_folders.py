"""Loading real-world model folders: fp16-variant-only weights, and folders that cannot be loaded."""

from __future__ import annotations

import shutil

import pytest
import torch
from diffusers import StableDiffusionPipeline

from clif_serve.cli import main
from clif_serve.errors import ModelFolderError
from clif_serve.models.loading import component_weight_bytes, load_base_model, load_text_model, weight_variant
from clif_serve.models.tiny import embedded_model_dir


@pytest.fixture(scope="module")
def fp16_folder(tmp_path_factory):
    """The tiny model saved as most checkpoints ship: only `*.fp16.safetensors` weights."""
    folder = tmp_path_factory.mktemp("fp16") / "tiny-fp16"
    pipeline = StableDiffusionPipeline.from_pretrained(embedded_model_dir("tiny"), local_files_only=True)
    pipeline.to(torch.float16).save_pretrained(folder, variant="fp16")
    return folder


def test_a_folder_with_only_fp16_weights_loads_in_float32(fp16_folder, tiny_base):
    assert not list(fp16_folder.glob("unet/diffusion_pytorch_model.safetensors"))
    assert weight_variant(fp16_folder / "unet") == "fp16" and weight_variant(embedded_model_dir("tiny") / "unet") is None
    base = load_base_model(fp16_folder)
    assert base.unet.dtype == base.vae.dtype == base.text_encoders[0].dtype == torch.float32
    assert base.spec.image_multiple == tiny_base.spec.image_multiple
    want = tiny_base.unet.conv_in.weight.to(torch.float16).to(torch.float32)
    assert torch.equal(base.unet.conv_in.weight, want), "the fp16 weights, not a fresh init"
    text = load_text_model(fp16_folder)  # what `concepts new` loads: the same variant handling
    assert text.spec == base.spec and text.text_encoders[0].dtype == torch.float32


def test_weight_bytes_count_float32_from_the_headers(fp16_folder, tiny_base):
    sizes = component_weight_bytes(fp16_folder)
    assert sizes["unet"] == 4 * sum(p.numel() for p in tiny_base.unet.parameters())
    assert sizes["text_encoder"] == 4 * sum(t.numel() for t in tiny_base.text_encoders[0].state_dict().values())
    assert set(sizes) == {"text_encoder", "unet", "vae"}


def test_a_folder_that_cannot_be_loaded_gets_one_line_and_exit_2(tmp_path, capsys):
    folder = tmp_path / "broken"
    shutil.copytree(embedded_model_dir("tiny"), folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    with pytest.raises(ModelFolderError, match="unet: cannot be loaded"):
        load_base_model(folder)
    assert main(["generate", "a dog", "--model", str(folder), "--steps", "1", "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unet: cannot be loaded" in err and "Traceback" not in err
