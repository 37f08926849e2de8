"""`clif-serve repo`: complete Triton configs for every backend, from the model_repo/ template."""

from __future__ import annotations

import os
import shutil

import pytest
from google.protobuf import json_format

from clif_serve.contract.folder import read_folder
from clif_serve.errors import InputError, ModelFolderError
from clif_serve.serving.configs import model_config, read_config
from clif_serve.serving.options import RepoOptions
from clif_serve.serving.parameters import ModelParameters
from clif_serve.serving.protocol import CONCEPTS_INPUTS, PIPELINE_INPUTS
from clif_serve.serving.repository import STAGE_TEMPLATE, build_repository, template_dir
from clif_serve.serving.signatures import stage_fields

STAGES = ("text_encoder", "unet", "vae_decoder")


def _inputs(config) -> dict:
    return {i.name: (list(i.dims), i.optional) for i in config.input}


def _parameters(config) -> ModelParameters:
    """The typed parameters, decoded the way the models decode them (from the JSON form of the config)."""
    return ModelParameters.from_config(json_format.MessageToDict(config, preserving_proto_field_name=True)["parameters"])


def test_python_repository_is_complete(tiny_export, tmp_path):
    repo = build_repository(tiny_export.root, tmp_path / "repo", RepoOptions(pipeline_instances=3))
    umask = os.umask(0)
    os.umask(umask)
    for folder in (repo, tiny_export.root):  # as mkdir makes them (not mkdtemp's 0700): other users can read
        assert folder.stat().st_mode & 0o777 == 0o777 & ~umask, folder
    assert sorted(p.name for p in repo.iterdir()) == sorted(
        [*STAGES, "unet_lora", "clif_pipeline", "clif_concepts"]
    )
    for stage in (*STAGES, "unet_lora"):
        config = read_config(repo / stage / "config.pbtxt")
        assert config.name == stage and config.backend == "python"
        assert config.max_batch_size == tiny_export.manifest["recipe"]["batch"][2]
        assert config.HasField("dynamic_batching")
        assert (repo / stage / "1" / "model.onnx").is_file() and (repo / stage / "1" / "model.py").is_file()
    text = read_config(repo / "text_encoder" / "config.pbtxt")
    assert _inputs(text) == {"input_ids": ([77], False), "concept_table": ([32, 32], False)}
    assert text.dynamic_batching.max_queue_delay_microseconds == RepoOptions().text_encoder_delay_us
    unet = read_config(repo / "unet" / "config.pbtxt")
    assert _inputs(unet) == {
        "sample": ([4, -1, -1], False),
        "timestep": ([1], False),
        "encoder_hidden_states": ([77, 32], False),
    }
    assert unet.input[1].HasField("reshape") and list(unet.input[1].reshape.shape) == []
    lora = _inputs(read_config(repo / "unet_lora" / "config.pbtxt"))
    assert lora["lora_id"] == ([1], True)
    assert lora["region_hidden_states"] == ([4, 77, 32], False) and lora["region_masks"] == ([4, -1, -1], False)
    pipeline = read_config(repo / "clif_pipeline" / "config.pbtxt")
    assert [i.name for i in pipeline.input] == [f.name for f in PIPELINE_INPUTS]
    assert _inputs(pipeline)["regions"] == ([-1], True)
    assert pipeline.instance_group[0].count == 3 and pipeline.max_batch_size == 0
    assert _parameters(pipeline).lora_adapters
    assert read_folder(repo / "clif_pipeline" / "1").deployment.limits.max_size == 128
    assert (repo / "clif_pipeline" / "1" / "tokenizer" / "tokenizer.json").is_file()
    concepts = read_config(repo / "clif_concepts" / "config.pbtxt")
    assert [i.name for i in concepts.input] == [f.name for f in CONCEPTS_INPUTS]
    with pytest.raises(InputError) as exists:
        build_repository(tiny_export.root, repo)
    assert exists.value.field == "out"


def test_native_backends_get_native_configs(tiny_export, tmp_path, capsys):
    from clif_serve.cli import main

    assert (
        main(
            [
                "repo",
                "--export",
                str(tiny_export.root),
                "--out",
                str(tmp_path / "ort"),
                "--backend",
                "onnxruntime",
            ]
        )
        == 0
    )
    repo = tmp_path / "ort"
    assert capsys.readouterr().out.strip() == str(repo.resolve())
    # unet_lora serves regions there, without adapters (those need the python backend).
    lora = read_config(repo / "unet_lora" / "config.pbtxt")
    assert lora.backend == "onnxruntime" and "lora_id" not in _inputs(lora) and "region_masks" in _inputs(lora)
    for stage in STAGES:
        config = read_config(repo / stage / "config.pbtxt")
        assert config.backend == "onnxruntime" and config.default_model_filename == "model.onnx"
        assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
        assert (repo / stage / "1" / "model.onnx").is_file() and not (
            repo / stage / "1" / "model.py"
        ).exists()
    assert not _parameters(read_config(repo / "clif_pipeline" / "config.pbtxt")).lora_adapters
    with pytest.raises(ModelFolderError, match="no TensorRT engine"):
        build_repository(tiny_export.root, tmp_path / "trt", RepoOptions(backend="tensorrt"))
    assert not (tmp_path / "trt").exists()
    # Structure only: engines cannot be built here, so placeholder files stand in for them.
    export = shutil.copytree(tiny_export.root, tmp_path / "export-with-engines")
    for stage in (*STAGES, "unet_lora"):
        (export / stage / "model.plan").write_bytes(b"placeholder, not an engine")
    repo = build_repository(export, tmp_path / "trt", RepoOptions(backend="tensorrt"))
    for stage in (*STAGES, "unet_lora"):
        config = read_config(repo / stage / "config.pbtxt")
        assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
        assert (repo / stage / "1" / "model.plan").is_file()


def test_sdxl_stage_configs(tiny_xl_export):
    spec = tiny_xl_export.spec
    template = template_dir() / STAGE_TEMPLATE / "python.pbtxt"
    deployment = tiny_xl_export.deployment
    text_2 = model_config(template, "text_encoder_2", *stage_fields(deployment, "text_encoder_2"))
    assert _inputs(text_2)["concept_table"] == ([deployment.served_concept_rows, spec.text_encoders[1].hidden_size], False)
    unet = model_config(template, "unet", *stage_fields(deployment, "unet"))
    width = sum(encoder.hidden_size for encoder in spec.text_encoders)
    assert _inputs(unet)["encoder_hidden_states"] == ([77, width], False)
    assert _inputs(unet)["text_embeds"] == ([spec.text_encoders[1].pooled_size], False)
    assert _inputs(unet)["time_ids"] == ([6], False)


def test_bad_options_and_missing_template(tiny_export, tmp_path, monkeypatch):
    for options, field in (
        (RepoOptions(backend="tflite"), "backend"),
        (RepoOptions(pipeline_instances=0), "pipeline_instances"),
        (RepoOptions(models=ModelParameters(ort_spinning="sometimes")), "ort_spinning"),
    ):
        with pytest.raises(InputError) as bad:
            build_repository(tiny_export.root, tmp_path / "repo", options)
        assert bad.value.field == field
    monkeypatch.setenv("CLIF_SERVE_MODEL_REPO_TEMPLATE", str(tmp_path))
    with pytest.raises(ModelFolderError, match="template"):
        build_repository(tiny_export.root, tmp_path / "repo")


def test_merged_export_routes_alike_on_every_backend(tiny_xl_export, tmp_path):
    """A merged export: requests without LoRA run on unet_lora without adapter, on every backend; only
    the python backend gives unet_lora the lora_id input that routes other sets to adapters."""
    python = build_repository(tiny_xl_export.root, tmp_path / "python")
    assert "lora_id" in _inputs(read_config(python / "unet_lora" / "config.pbtxt"))
    native = build_repository(tiny_xl_export.root, tmp_path / "ort", RepoOptions(backend="onnxruntime"))
    lora = read_config(native / "unet_lora" / "config.pbtxt")
    assert lora.backend == "onnxruntime" and "lora_id" not in _inputs(lora)
    regions = {"region_hidden_states": ([4, 77, 64], False), "region_masks": ([4, -1, -1], False)}
    assert _inputs(lora) == _inputs(read_config(native / "unet" / "config.pbtxt")) | regions
    for model in ("clif_pipeline", "clif_concepts"):
        assert not _parameters(read_config(native / model / "config.pbtxt")).lora_adapters
    export = shutil.copytree(tiny_xl_export.root, tmp_path / "export-with-engines")
    for stage in ("text_encoder", "text_encoder_2", "unet", "unet_lora", "vae_decoder"):
        (export / stage / "model.plan").write_bytes(b"placeholder, not an engine")
    trt = build_repository(export, tmp_path / "trt", RepoOptions(backend="tensorrt"))
    assert read_config(trt / "unet_lora" / "config.pbtxt").platform == "tensorrt_plan"
    routing = read_folder(trt / "clif_pipeline" / "1").deployment.routing(adapters=False)
    assert routing.route(None).stage == "unet_lora"
    assert routing.route(tiny_xl_export.deployment.merged_lora).stage == "unet"
    with pytest.raises(InputError, match="prompt: LoRA set 0+ cannot run here"):
        routing.route("0" * 16)


def test_editing_a_repositorys_files_edits_nothing_else(tiny_export, tmp_path):
    # Users edit model.py in their repositories; it (and the manifest) must not be the installed template's
    # or the export's file under another name. Only the large weights are hard links.
    first = build_repository(tiny_export.root, tmp_path / "first")
    second = build_repository(tiny_export.root, tmp_path / "second")
    template = template_dir() / "clif_pipeline" / "model.py"
    original = template.read_bytes()
    for name in ("clif_pipeline", "unet"):
        for file in ("model.py", "manifest.json"):
            (first / name / "1" / file).write_text("# edited\n")
    assert template.read_bytes() == original
    assert (tiny_export.root / "manifest.json").read_text() != "# edited\n"
    assert (second / "clif_pipeline" / "1" / "model.py").read_bytes() == original
    assert (second / "unet" / "1" / "manifest.json").read_bytes() == (tiny_export.root / "manifest.json").read_bytes()
    assert (first / "unet" / "1" / "model.onnx").stat().st_ino == (second / "unet" / "1" / "model.onnx").stat().st_ino
