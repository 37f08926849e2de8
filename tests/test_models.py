"""Embedded tiny models and the one loading path (names and local folders)."""

from __future__ import annotations

import json
import shutil

import pytest

from clif_serve.errors import ModelFolderError
from clif_serve.models.loading import detect_layout, load_base_model, resolve_model_dir
from clif_serve.models.tiny import build_tiny_sd15, build_tiny_sdxl, embedded_model_dir


def test_tiny_is_sd15_shaped(tiny_base):
    spec = tiny_base.spec
    assert spec.kind == "sd15"
    assert spec.text_encoder_names == ("text_encoder",)
    assert spec.text_encoders[0].hidden_layer == "last"
    assert spec.default_image_size == 64
    assert spec.lora_targets, "attention projections must be listed as LoRA targets"


def test_tiny_xl_is_sdxl_shaped(tiny_xl_base):
    spec = tiny_xl_base.spec
    assert spec.kind == "sdxl"
    assert spec.text_encoder_names == ("text_encoder", "text_encoder_2")
    assert all(encoder.hidden_layer == "penultimate" for encoder in spec.text_encoders)
    assert spec.force_zeros_for_empty_prompt
    assert tiny_xl_base.unet.config.addition_embed_type == "text_time"
    assert hasattr(tiny_xl_base.text_encoders[1], "text_projection")


def test_embedded_model_is_cached():
    first = embedded_model_dir("tiny")
    stamp = (first / "unet" / "config.json").stat().st_mtime_ns
    assert embedded_model_dir("tiny") == first
    assert (first / "unet" / "config.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("builder,name", [(build_tiny_sd15, "tiny"), (build_tiny_sdxl, "tiny-xl")])
def test_local_folder_loads_through_the_same_path(tmp_path, builder, name):
    builder().save_pretrained(tmp_path / "model")
    by_path = load_base_model(tmp_path / "model")
    by_name = load_base_model(name)
    assert by_path.path == tmp_path / "model"
    assert by_path.spec == by_name.spec, "same seeds must give the same model and fingerprint"


def test_fingerprint_tells_bases_apart(tiny_base, tiny_xl_base):
    assert tiny_base.spec.fingerprint != tiny_xl_base.spec.fingerprint


@pytest.fixture
def sdxl_copy(tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(embedded_model_dir("tiny-xl"), target)
    return target


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(ModelFolderError, match="no such folder"):
        resolve_model_dir(tmp_path / "nowhere")


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ModelFolderError, match="model_index.json is missing"):
        load_base_model(tmp_path)


@pytest.mark.parametrize(
    "remove,expected",
    [
        ("unet/config.json", "unet/config.json"),
        ("tokenizer_2", "tokenizer_2/"),
        ("scheduler/scheduler_config.json", "scheduler/scheduler_config.json"),
        ("vae/diffusion_pytorch_model.safetensors", "vae/ weights"),
    ],
)
def test_incomplete_folder_lists_what_is_missing(sdxl_copy, remove, expected):
    target = sdxl_copy / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(ModelFolderError, match="incomplete SDXL") as error:
        load_base_model(sdxl_copy)
    assert expected in str(error.value)


def test_malformed_model_index(sdxl_copy):
    (sdxl_copy / "model_index.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="not valid JSON"):
        detect_layout(sdxl_copy)


def test_layout_detection_reads_model_index(sdxl_copy):
    kind, index = detect_layout(sdxl_copy)
    assert kind == "sdxl" and index["_class_name"] == "StableDiffusionXLPipeline"
    index["text_encoder_2"] = [None, None]
    (sdxl_copy / "model_index.json").write_text(json.dumps(index))
    assert detect_layout(sdxl_copy)[0] == "sd15"
