"""What `concepts new` and a refused in-process request load: the text side and the configs, never the
UNet or VAE weights (on a folder whose UNet and VAE weight files are unreadable)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from clif_serve.cli import main
from clif_serve.concepts.create import new_pack
from clif_serve.concepts.pack import read_pack
from clif_serve.errors import ModelFolderError
from clif_serve.models.loading import LORA_TARGET_SUFFIXES, load_base_model, load_text_model
from clif_serve.models.tiny import embedded_model_dir

_IMAGE_WEIGHTS = ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def text_only_folder(tmp_path_factory):
    """The tiny model with its UNet and VAE weight files overwritten by bytes no loader can read."""
    folder = tmp_path_factory.mktemp("text-only") / "tiny"
    shutil.copytree(embedded_model_dir("tiny"), folder)
    for weights in _IMAGE_WEIGHTS:
        (folder / weights).write_bytes(b"not a safetensors file")
    return folder


def _pack_content(pack) -> tuple[dict, dict]:
    """A pack's manifest and the bytes of each tensor (safetensors' header order varies between writes)."""
    return pack.manifest(), {
        name: (tuple(tensor.shape), tensor.dtype, tensor.numpy().tobytes()) for name, tensor in pack.embeddings.items()
    }


def _new_pack_content(base) -> tuple[dict, dict]:
    return _pack_content(new_pack(base, "joe", "person", num_tokens=3))


@pytest.mark.parametrize("model", ["tiny", "tiny-xl"])
def test_the_text_side_makes_the_same_pack_and_spec_as_the_full_base(model, request):
    base = request.getfixturevalue("tiny_base" if model == "tiny" else "tiny_xl_base")
    text = load_text_model(model)
    assert not hasattr(text, "unet") and not hasattr(text, "vae")
    assert _new_pack_content(text) == _new_pack_content(base)
    assert text.spec == base.spec and text.spec.scheduler_config == base.spec.scheduler_config
    # The LoRA targets read from the UNet's config alone are those of the loaded UNet's modules.
    loaded_targets = {
        name: (module.in_features, module.out_features)
        for name, module in base.unet.named_modules()
        if isinstance(module, torch.nn.Linear) and name.endswith(LORA_TARGET_SUFFIXES)
    }
    assert text.spec.lora_targets == loaded_targets and loaded_targets


def test_concepts_new_never_reads_the_unet_or_vae_weights(text_only_folder, tiny_base, tmp_path, capsys):
    with pytest.raises(ModelFolderError, match="unet: cannot be loaded"):
        load_base_model(text_only_folder)
    out = tmp_path / "joe.safetensors"
    command = ["concepts", "new", "joe", "--model", str(text_only_folder), "--init-from", "person", "--num-tokens", "3"]
    assert main([*command, "-o", str(out)]) == 0, capsys.readouterr().err
    assert _pack_content(read_pack(out)) == _new_pack_content(tiny_base)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--height", "260"], "height: must be a multiple of 8, got 260"),
        (["--steps", "0"], "steps: must be in [1, 150], got 0"),
        (["--guidance-scale", "31"], "guidance_scale: must be in [0.0, 30.0], got 31.0"),
    ],
)
def test_a_refused_request_is_refused_before_the_unet_is_loaded(text_only_folder, tmp_path, capsys, option, message):
    png = str(tmp_path / "x.png")
    for model in ("tiny", str(text_only_folder)):
        assert main(["generate", "a photo of a dog", "--model", model, *option, "-o", png]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    # A request that passes every check does reach the unreadable UNet.
    assert main(["generate", "a photo of a dog", "--model", str(text_only_folder), "--steps", "1", "-o", png]) == 2
    assert "unet: cannot be loaded" in capsys.readouterr().err


_FIRST_REQUEST = """
import sys
from clif_serve.runtime.factory import torch_pipeline
from clif_serve.runtime.request import GenerationRequest

pipeline = torch_pipeline("tiny")
before = set(sys.modules)
pipeline.generate(GenerationRequest("a photo", steps=2, seed=0))
print(sorted(set(sys.modules) - before))
"""


def test_a_fresh_pipelines_first_request_imports_nothing():
    # Every served pipeline instance is its own process; its first request used to import the schedulers
    # diffusers lists as compatible (scipy among them, 0.7-2 s). Building the pipeline pays that now.
    imported = subprocess.run(
        [sys.executable, "-c", _FIRST_REQUEST], capture_output=True, text=True, check=True, timeout=300
    ).stdout.strip().splitlines()[-1]
    assert imported == "[]", f"the first request imported {imported}"
