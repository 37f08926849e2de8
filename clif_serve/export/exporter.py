"""`export_model`: a base model -> an export folder (see `clif_serve.contract.folder`), every stage checked
before acceptance.

The folder is assembled in a staging directory beside `out_dir` and moved into place only when
every stage passed its parity check, so a failed export leaves nothing half-written behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
from tqdm import tqdm

from clif_serve.concepts.pack import ConceptPack
from clif_serve.contract.folder import (
    MANIFEST,
    ONNX_FILE,
    WEIGHT_MAP_FILE,
    ExportFolder,
    manifest_document,
    open_export,
    write_manifests,
)
from clif_serve.contract.stages import UNET, tokenizer_dir_name
from clif_serve.errors import ClifServeError, InputError
from clif_serve.export.onnx_graph import describe_io, initializer_arrays, trace
from clif_serve.export.parity import check_stage, quiet_session_options
from clif_serve.export.recipe import Recipe, default_recipe_name, load_recipe
from clif_serve.export.traces import StageTrace, stage_builders
from clif_serve.export.weight_map import build_weight_map, holders, write_weight_map
from clif_serve.lora.weights import LoraWeights
from clif_serve.models.loading import BaseModel, load_base_model
from clif_serve.paths import staging_dir


def _write_weight_map(stage: StageTrace, program, folder: Path, targets: list[str]) -> dict:
    """Write `weight_map.json` for a UNet TensorRT will refit; report how many LoRA targets it covers."""
    unet = stage.module.unet
    parameters = {name: tensor.detach().cpu().numpy() for name, tensor in unet.state_dict().items()}
    weight_map = build_weight_map(initializer_arrays(program.model), parameters, prefix="unet.")
    write_weight_map(weight_map, folder / WEIGHT_MAP_FILE)
    found = holders(weight_map)
    mapped = sum(len(found.get(f"{module}.weight", [])) == 1 for module in targets)
    return {"file": WEIGHT_MAP_FILE, "initializers": len(weight_map), "lora_targets_mapped": [mapped, len(targets)]}


def _check_graph_io(stage: StageTrace, record: dict) -> None:
    """The saved graph must have exactly the contract's tensor names (a mis-traced stage fails here)."""
    inputs = tuple(item["name"] for item in record["inputs"])
    outputs = tuple(item["name"] for item in record["outputs"])
    if inputs != stage.signature.input_names or outputs != stage.output_names:
        raise ClifServeError(
            f"stage {stage.name}: the ONNX graph has inputs {inputs} and outputs {outputs}, the contract says "
            f"{stage.signature.input_names} and {stage.output_names}"
        )


def export_stage(stage: StageTrace, folder: Path, recipe: Recipe, weight_map_targets: list[str] | None = None) -> dict:
    """Trace, save and check one stage into `folder`; return its record for the manifest.

    `weight_map_targets`: LoRA target modules whose weights TensorRT will refit (the map of where
    they live in the graph is written only then).
    """
    folder.mkdir(parents=True)
    started = time.perf_counter()
    program = trace(stage, recipe.opset)
    path = folder / ONNX_FILE
    program.save(path, external_data=True)
    export_seconds = time.perf_counter() - started
    record = {"stage": stage.name, "file": f"{stage.name}/{ONNX_FILE}", "opset": recipe.opset}
    record.update(describe_io(path, hide=stage.hidden_inputs))
    _check_graph_io(stage, record)
    if weight_map_targets:
        record["weight_map"] = _write_weight_map(stage, program, folder, weight_map_targets)
    del program
    started = time.perf_counter()
    session = ort.InferenceSession(str(path), quiet_session_options(), providers=["CPUExecutionProvider"])
    record["parity"] = check_stage(stage, session, recipe.parity_tolerance)
    record["parity_seconds"] = round(time.perf_counter() - started, 3)
    record["export_seconds"] = round(export_seconds, 3)
    record.update(stage.record_extra)
    return record


def _prepare_out(out_dir: Path, overwrite: bool) -> None:
    """Refuse a file, a non-empty folder (unless `overwrite`), and never replace a non-export folder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError("out", f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise InputError("out", f"{out_dir} is not empty; choose another folder or pass --overwrite")
        if not (out_dir / MANIFEST).is_file():
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
) -> ExportFolder:
    """Export `model` ('tiny', 'tiny-xl', a diffusers folder or a loaded BaseModel) to `out_dir`.

    `recipe` is a Recipe, a recipe name or file, or None for the model's default. `merge_lora` (a
    pack with a LoRA, or LoRA weights) folds that LoRA into the plain `unet` stage. `tensorrt` also
    builds TensorRT engines (needs the tensorrt package and a GPU); with the recipe's
    `tensorrt.refit` the UNet engine is refittable and the export records the weight map a refit
    needs. Raises ExportParityError when a stage disagrees with PyTorch beyond the recipe's
    tolerance; `out_dir` is then left untouched.
    """
    base = model if isinstance(model, BaseModel) else load_base_model(model)
    recipe = resolve_recipe(recipe, model, base)
    recipe.validate_for(base.spec)
    merge_lora = _lora_to_merge(merge_lora, base)
    deployment = recipe.deployment(base.spec, merge_lora.set_id if merge_lora is not None else None)
    refit_targets = sorted(base.spec.lora_targets) if tensorrt and recipe.tensorrt.refit else None
    if tensorrt:
        from clif_serve.export.tensorrt import import_tensorrt

        import_tensorrt()  # fail before the long ONNX export, not after it
    out = Path(out_dir)
    _prepare_out(out, overwrite)
    staging = staging_dir(out)
    try:
        stages = {}
        for name, build in tqdm(
            stage_builders(base, deployment, merge_lora), desc="export", unit="stage", disable=not progress
        ):
            targets = refit_targets if name == UNET else None
            stages[name] = {
                "base_fingerprint": base.spec.fingerprint,
                **export_stage(build(), staging / name, recipe, targets),
            }
        for tokenizer, name in zip(base.tokenizers, base.spec.text_encoder_names, strict=True):
            tokenizer.save_pretrained(staging / tokenizer_dir_name(name))
        manifest = manifest_document(deployment, recipe.to_dict(), stages)
        write_manifests(staging, manifest)
        if tensorrt:
            from clif_serve.export.tensorrt import build_engines

            for name, engine in build_engines(open_export(staging), recipe, progress=progress).items():
                stages[name]["tensorrt"] = engine
            write_manifests(staging, manifest)
        _move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return open_export(out)
