"""Bad input is refused before any training step, with an error naming the option or concept."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from clif_serve.errors import InputError
from clif_serve.training.config import ConceptSource, TrainConfig, parse_concept, parse_per_stage
from clif_serve.training.segmentation import SegmentationConfig
from clif_serve.training.trainer import train


def _config(concept_dirs, out: Path, *concepts: ConceptSource, **changes) -> TrainConfig:
    concepts = concepts or (ConceptSource("ann", concept_dirs["ann"], "dog"),)
    return replace(TrainConfig(concepts=concepts, out=out, steps={"clif": 1, "ti": 1, "lora": 1}), **changes)


def _refused(config: TrainConfig, field: str, match: str) -> None:
    with pytest.raises(InputError, match=match) as caught:
        train(config)
    assert caught.value.field == field
    assert not (config.out / "train_log.jsonl").exists()
    assert not list(config.out.glob("*.safetensors"))


def test_empty_folder(concept_dirs, tmp_path):
    (tmp_path / "empty").mkdir()
    config = _config(concept_dirs, tmp_path / "out", ConceptSource("ann", tmp_path / "empty", "dog"))
    _refused(config, "concept ann", "holds no images")


def test_missing_folder(concept_dirs, tmp_path):
    config = _config(concept_dirs, tmp_path / "out", ConceptSource("ann", tmp_path / "nope", "dog"))
    _refused(config, "concept ann", "no such folder")


def test_unreadable_image(concept_dirs, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png")
    config = _config(concept_dirs, tmp_path / "out", ConceptSource("ann", folder, "dog"))
    _refused(config, "concept ann", "a.png is not a readable image")


def test_image_too_small(concept_dirs, tmp_path):
    folder = tmp_path / "small"
    folder.mkdir()
    Image.new("RGB", (32, 80), "red").save(folder / "s.png")
    config = _config(concept_dirs, tmp_path / "out", ConceptSource("ann", folder, "dog"))
    _refused(config, "concept ann", "32x80")


def test_class_word_must_be_one_token(concept_dirs, tmp_path):
    config = _config(concept_dirs, tmp_path / "out", ConceptSource("ann", concept_dirs["ann"], "xylophonist"))
    _refused(config, "concept ann class word", "not a single token")


def test_duplicate_names(concept_dirs, tmp_path):
    twice = ConceptSource("ann", concept_dirs["ann"], "dog")
    _refused(_config(concept_dirs, tmp_path / "out", twice, twice), "concept", "given twice")


def test_bad_name_stage_objective_and_segmentation(concept_dirs, tmp_path):
    out = tmp_path / "out"
    _refused(_config(concept_dirs, out, ConceptSource("../x", concept_dirs["ann"], "dog")), "name", "must match")
    _refused(_config(concept_dirs, out, stages=("ti", "clif")), "stages", "order")
    _refused(_config(concept_dirs, out, stages=("dreambooth",)), "stages", "pick distinct")
    _refused(_config(concept_dirs, out, objective="triplet"), "objective", "not one of")
    _refused(_config(concept_dirs, out, segmentation=SegmentationConfig(method="masks")), "segmentation", "no masks")
    _refused(_config(concept_dirs, out, segmentation=SegmentationConfig(method="sam")), "sam_checkpoint", "--sam-checkpoint")
    _refused(_config(concept_dirs, out, segmentation=SegmentationConfig(min_area=0.9)), "region_area", "min")
    _refused(_config(concept_dirs, out, mixed_precision="fp16"), "mixed_precision", "CUDA")


def test_image_encoder_folder_is_checked(concept_dirs, tmp_path):
    _refused(_config(concept_dirs, tmp_path / "out", image_encoders=(str(tmp_path),)), "image_encoder", "config.json")


def test_concept_argument_parsing(tmp_path):
    assert parse_concept(f"joe={tmp_path}:person") == ConceptSource("joe", tmp_path, "person")
    assert parse_concept(f"joe={tmp_path}", default_class="dog").class_word == "dog"
    with pytest.raises(InputError, match="class word") as caught:
        parse_concept(f"joe={tmp_path}")
    assert caught.value.field == "concept joe"
    with pytest.raises(InputError, match="NAME=IMAGE_DIR"):
        parse_concept("joe")
    assert parse_per_stage("clif=5,ti=7", int, "steps") == {"clif": 5, "ti": 7}
    assert parse_per_stage("9", int, "steps") == {"clif": 9, "ti": 9, "lora": 9}
    with pytest.raises(InputError, match="unknown stage"):
        parse_per_stage("sft=1", int, "steps")
