"""`export_model`: a base model -> an export folder (see `layout.py`), every stage checked before acceptance.

The folder is assembled in a staging directory beside `out_dir` and moved into place only when
every stage passed its parity check, so a failed export leaves nothing half-written behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
from tqdm import tqdm

from clif_serve.concepts.lora import LoraWeights
from clif_serve.concepts.pack import ConceptPack
from clif_serve.errors import InputError
from clif_serve.export import layout
from clif_serve.export.onnx_graph import describe_io, initializer_arrays, trace
from clif_serve.export.parity import check_stage, quiet_session_options
from clif_serve.export.recipe import Recipe, default_recipe_name, load_recipe
from clif_serve.export.stages import Stage, image_multiple, stage_builders
from clif_serve.export.weight_map import build_weight_map, holders, write_weight_map
from clif_serve.models.loading import BaseModel, load_base_model


def _write_weight_map(stage: Stage, program, folder: Path) -> dict:
    """Write `weight_map.json` for a stage TensorRT may refit; report how many LoRA targets it covers."""
    unet = stage.module.unet
    parameters = {name: tensor.detach().cpu().numpy() for name, tensor in unet.state_dict().items()}
    weight_map = build_weight_map(initializer_arrays(program.model), parameters, prefix="unet.")
    write_weight_map(weight_map, folder / layout.WEIGHT_MAP_FILE)
    found = holders(weight_map)
    mapped = sum(len(found.get(f"{module}.weight", [])) == 1 for module in stage.weight_map_targets)
    return {
        "file": layout.WEIGHT_MAP_FILE,
        "initializers": len(weight_map),
        "lora_targets_mapped": [mapped, len(stage.weight_map_targets)],
    }


def export_stage(stage: Stage, folder: Path, recipe: Recipe) -> dict:
    """Trace, save and check one stage into `folder`; return its manifest entry."""
    folder.mkdir(parents=True)
    started = time.perf_counter()
    program = trace(stage, recipe.opset)
    path = folder / layout.ONNX_FILE
    program.save(path, external_data=True)
    export_seconds = time.perf_counter() - started
    manifest = {"stage": stage.name, "file": f"{stage.name}/{layout.ONNX_FILE}", "opset": recipe.opset}
    manifest.update(describe_io(path, hide=stage.zero_default_inputs))
    if stage.weight_map_targets:
        manifest["weight_map"] = _write_weight_map(stage, program, folder)
    del program
    started = time.perf_counter()
    session = ort.InferenceSession(str(path), quiet_session_options(), providers=["CPUExecutionProvider"])
    manifest["parity"] = check_stage(stage, session, recipe.parity_tolerance)
    manifest["parity_seconds"] = round(time.perf_counter() - started, 3)
    manifest["export_seconds"] = round(export_seconds, 3)
    manifest.update(stage.manifest_extra)
    return manifest


def write_manifests(root: Path, manifest: dict) -> None:
    """The top-level manifest and each stage's entry as `<stage>/manifest.json`."""
    (root / layout.MANIFEST).write_text(json.dumps(manifest, indent=1))
    for name, stage in manifest["stages"].items():
        (root / name / layout.STAGE_MANIFEST).write_text(json.dumps(stage, indent=1))


def _prepare_out(out_dir: Path, overwrite: bool) -> None:
    """Refuse a file, a non-empty folder (unless `overwrite`), and never replace a non-export folder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError("out", f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise InputError("out", f"{out_dir} is not empty; choose another folder or pass --overwrite")
        if not (out_dir / layout.MANIFEST).is_file():
            raise InputError(
                "out", f"{out_dir} is not an export folder; --overwrite only replaces an earlier export"
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Replace `out_dir` (if any) by `staging`; the old folder goes only once the new one is in place."""
    trash = None
    if out_dir.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-old-", dir=out_dir.parent))
        os.replace(out_dir, trash / "old")
    os.replace(staging, out_dir)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def _lora_to_merge(source: ConceptPack | LoraWeights | None, base: BaseModel) -> LoraWeights | None:
    """The LoRA weights to merge, validated for the base model."""
    if isinstance(source, ConceptPack):
        source.validate_for(base.spec)
        if source.lora is None:
            raise InputError("merge_lora", f"concept pack {source.name!r} carries no LoRA")
        source = source.lora
    if source is not None:
        source.validate()
        source.validate_against(base.spec.lora_targets)
    return source


def resolve_recipe(recipe: Recipe | str | Path | None, model: object, base: BaseModel) -> Recipe:
    """A Recipe object as given, else one loaded by name/path, else the model's default recipe."""
    if isinstance(recipe, Recipe):
        return recipe
    return load_recipe(recipe if recipe is not None else default_recipe_name(model, base.spec))


def export_model(
    model: str | Path | BaseModel,
    out_dir: str | Path,
    recipe: Recipe | str | Path | None = None,
    merge_lora: ConceptPack | LoraWeights | None = None,
    tensorrt: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> layout.ExportFolder:
    """Export `model` ('tiny', 'tiny-xl', a diffusers folder or a loaded BaseModel) to `out_dir`.

    `recipe` is a Recipe, a recipe name or file, or None for the model's default. `merge_lora` (a
    pack with a LoRA, or LoRA weights) folds that LoRA into the plain `unet` stage. `tensorrt` also
    builds TensorRT engines (needs the tensorrt package and a GPU). Raises ExportParityError when a
    stage disagrees with PyTorch beyond the recipe's tolerance; `out_dir` is then left untouched.
    """
    base = model if isinstance(model, BaseModel) else load_base_model(model)
    recipe = resolve_recipe(recipe, model, base)
    recipe.check_for(base.spec, image_multiple(base))
    merge_lora = _lora_to_merge(merge_lora, base)
    if tensorrt:
        from clif_serve.export.tensorrt import import_tensorrt

        import_tensorrt()  # fail before the long ONNX export, not after it
    out = Path(out_dir)
    _prepare_out(out, overwrite)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-staging-", dir=out.parent))
    try:
        stages = {}
        for name, build in tqdm(
            stage_builders(base, recipe, merge_lora), desc="export", unit="stage", disable=not progress
        ):
            stages[name] = {
                "base_fingerprint": base.spec.fingerprint,
                **export_stage(build(), staging / name, recipe),
            }
        for tokenizer, name in zip(base.tokenizers, base.spec.text_encoder_names, strict=True):
            tokenizer.save_pretrained(staging / layout.tokenizer_dir_name(name))
        manifest = {
            "format": layout.EXPORT_FORMAT,
            "format_version": layout.EXPORT_FORMAT_VERSION,
            "model_spec": base.spec.to_dict(),
            "recipe": recipe.to_dict(),
            "image": {
                "height": recipe.height.as_list(),
                "width": recipe.width.as_list(),
                "multiple": image_multiple(base),
            },
            "stages": stages,
        }
        write_manifests(staging, manifest)
        if tensorrt:
            from clif_serve.export.tensorrt import build_engines

            for name, engine in build_engines(layout.open_export(staging), recipe, progress=progress).items():
                stages[name]["tensorrt"] = engine
            write_manifests(staging, manifest)
        _move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return layout.open_export(out)
