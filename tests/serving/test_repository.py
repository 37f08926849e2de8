"""`clif-serve repo`: complete Triton configs for every backend, from the model_repo/ template."""

from __future__ import annotations

import json
import shutil

import pytest

from clif_serve.errors import InputError, ModelFolderError
from clif_serve.serving.configs import model_config, read_config
from clif_serve.serving.options import RepoOptions
from clif_serve.serving.protocol import CONCEPTS_INPUTS, PIPELINE_INPUTS
from clif_serve.serving.repository import STAGE_TEMPLATE, build_repository, template_dir
from clif_serve.serving.signatures import stage_signature

STAGES = ("text_encoder", "unet", "vae_decoder")


def _inputs(config) -> dict:
    return {i.name: (list(i.dims), i.optional) for i in config.input}


def test_python_repository_is_complete(tiny_export, tmp_path):
    repo = build_repository(tiny_export.root, tmp_path / "repo", RepoOptions(pipeline_instances=3))
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
    assert "lora_id" in _inputs(read_config(repo / "unet_lora" / "config.pbtxt"))
    pipeline = read_config(repo / "clif_pipeline" / "config.pbtxt")
    assert [i.name for i in pipeline.input] == [f.name for f in PIPELINE_INPUTS]
    assert pipeline.instance_group[0].count == 3 and pipeline.max_batch_size == 0
    assert pipeline.parameters["lora_stage"].string_value == "unet_lora"
    assert json.loads(pipeline.parameters["limits"].string_value)["max_size"] == 128
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
    assert not (repo / "unet_lora").exists()  # adapters need the python backend
    for stage in STAGES:
        config = read_config(repo / stage / "config.pbtxt")
        assert config.backend == "onnxruntime" and config.default_model_filename == "model.onnx"
        assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
        assert (repo / stage / "1" / "model.onnx").is_file() and not (
            repo / stage / "1" / "model.py"
        ).exists()
    assert read_config(repo / "clif_pipeline" / "config.pbtxt").parameters["lora_stage"].string_value == ""
    with pytest.raises(ModelFolderError, match="no TensorRT engine"):
        build_repository(tiny_export.root, tmp_path / "trt", RepoOptions(backend="tensorrt"))
    assert not (tmp_path / "trt").exists()
    # Structure only: engines cannot be built here, so placeholder files stand in for them.
    export = shutil.copytree(tiny_export.root, tmp_path / "export-with-engines")
    for stage in STAGES:
        (export / stage / "model.plan").write_bytes(b"placeholder, not an engine")
    repo = build_repository(export, tmp_path / "trt", RepoOptions(backend="tensorrt"))
    for stage in STAGES:
        config = read_config(repo / stage / "config.pbtxt")
        assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
        assert (repo / stage / "1" / "model.plan").is_file()


def test_sdxl_stage_configs(tiny_xl_base, tmp_path):
    spec = tiny_xl_base.spec
    template = template_dir() / STAGE_TEMPLATE / "python.pbtxt"
    text_2 = model_config(template, "text_encoder_2", *stage_signature(spec, "text_encoder_2", 32))
    assert _inputs(text_2)["concept_table"] == ([32, spec.text_encoders[1].hidden_size], False)
    unet = model_config(template, "unet", *stage_signature(spec, "unet", 32))
    width = sum(encoder.hidden_size for encoder in spec.text_encoders)
    assert _inputs(unet)["encoder_hidden_states"] == ([77, width], False)
    assert _inputs(unet)["text_embeds"] == ([spec.text_encoders[1].pooled_size], False)
    assert _inputs(unet)["time_ids"] == ([6], False)


def test_bad_options_and_missing_template(tiny_export, tmp_path, monkeypatch):
    for options, field in (
        (RepoOptions(backend="tflite"), "backend"),
        (RepoOptions(pipeline_instances=0), "pipeline_instances"),
    ):
        with pytest.raises(InputError) as bad:
            build_repository(tiny_export.root, tmp_path / "repo", options)
        assert bad.value.field == field
    monkeypatch.setenv("CLIF_SERVE_MODEL_REPO_TEMPLATE", str(tmp_path))
    with pytest.raises(ModelFolderError, match="template"):
        build_repository(tiny_export.root, tmp_path / "repo")
