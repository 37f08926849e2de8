"""`export_model`: a base model -> an export folder (see `clif_serve.contract.folder`), every stage checked
before acceptance.

Memory: stages are done one at a time. For each, the PyTorch module is traced, the graph saved
and the reference outputs of its parity cases computed (`parity.reference_outputs`); then the
stage's trace is released, and a base model the exporter loaded itself loses each component as
soon as no later stage needs it. Only then, once every stage is traced and the PyTorch model is
gone, does onnxruntime load the saved stages, again one at a time, to compare with the references.
So a multi-GB UNet is never held by PyTorch and onnxruntime at once, the `unet_lora` stage shares
the base UNet's weights (`models.sharing.sharing_copy`), and no weight is hashed unless the recipe asks
for a refittable TensorRT UNet (the weight map). Before loading a
folder, `memory.check_export_memory` refuses an export that cannot fit, naming what it needs.

Staging: the folder is assembled in `.OUT.partial/` beside `out_dir` (see `staging`) and moved
into place only when every stage passed its parity check. A stage that fails does not discard the
stages that passed: they stay staged, and the next export with the same inputs redoes only the
others.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
from tqdm import tqdm

from clif_serve.concepts.pack import ConceptPack
from clif_serve.contract.deployment import Deployment
from clif_serve.contract.folder import (
    MANIFEST,
    ONNX_FILE,
    WEIGHT_MAP_FILE,
    ExportFolder,
    manifest_document,
    open_export,
    write_manifests,
)
from clif_serve.contract.ort_settings import OrtSettings
from clif_serve.contract.stages import UNET, UNET_STAGES, VAE_DECODER, tokenizer_dir_name
from clif_serve.errors import ClifServeError, InputError
from clif_serve.export.memory import check_export_memory
from clif_serve.export.onnx_graph import describe_io, initializer_arrays, trace
from clif_serve.export.parity import (
    ExportParityError,
    StageReference,
    check_reference,
    reference_outputs,
)
from clif_serve.export.recipe import Recipe, default_recipe_name, load_recipe
from clif_serve.export.staging import ExportStaging, weight_files_state
from clif_serve.export.traces import StageTrace, stage_builders
from clif_serve.export.weight_map import build_weight_map, holders, write_weight_map
from clif_serve.lora.weights import LoraWeights
from clif_serve.models.loading import BaseModel, load_base_model, resolve_model_dir


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


@dataclass
class TracedStage:
    """A stage saved to ONNX with its PyTorch reference outputs, waiting for its onnxruntime check."""

    name: str
    folder: Path
    record: dict
    reference: StageReference


def trace_stage(stage: StageTrace, folder: Path, recipe: Recipe, weight_map_targets: list[str] | None = None) -> TracedStage:
    """Trace and save one stage into `folder` and compute its PyTorch reference outputs.

    `weight_map_targets`: LoRA target modules whose weights TensorRT will refit (the map of where
    they live in the graph is written only then).
    """
    started = time.perf_counter()
    program = trace(stage, recipe.opset)
    path = folder / ONNX_FILE
    program.save(path, external_data=True)
    record = {"stage": stage.name, "file": f"{stage.name}/{ONNX_FILE}", "opset": recipe.opset}
    record.update(describe_io(path, hide=stage.hidden_inputs))
    _check_graph_io(stage, record)
    if weight_map_targets:
        record["weight_map"] = _write_weight_map(stage, program, folder, weight_map_targets)
    del program
    record["export_seconds"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    reference = reference_outputs(stage, recipe.parity_tolerance)
    record["reference_seconds"] = round(time.perf_counter() - started, 3)
    record.update(stage.record_extra)
    return TracedStage(stage.name, folder, record, reference)


def check_traced(traced: TracedStage) -> dict:
    """Load the saved stage in onnxruntime, compare with the references; the record with its parity figures."""
    started = time.perf_counter()
    # The executors' session settings (error-only logging, threads spinning only during a run).
    options = OrtSettings().session_options()
    session = ort.InferenceSession(str(traced.folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])
    parity = check_reference(traced.reference, session)
    del session
    return {**traced.record, "parity": parity, "parity_seconds": round(time.perf_counter() - started, 3)}


def export_stage(stage: StageTrace, folder: Path, recipe: Recipe, weight_map_targets: list[str] | None = None) -> dict:
    """Trace, save and check one stage into a new `folder`; return its record for the manifest."""
    folder.mkdir(parents=True)
    return check_traced(trace_stage(stage, folder, recipe, weight_map_targets))


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


def _release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc keeps them otherwise)."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def resume_key(base: BaseModel, deployment: Deployment, recipe: Recipe, weight_map: bool) -> dict:
    """What must be equal for an export to reuse the stages an interrupted one left staged."""
    return {
        "deployment": deployment.to_dict(),
        "recipe": recipe.to_dict(),
        "model": str(base.path.resolve()),
        "weights": weight_files_state(base.path),
        "weight_map": weight_map,
    }


def _component(stage: str) -> str:
    """The base-model component a stage is traced from: a text encoder, `unet` or `vae`."""
    return UNET if stage in UNET_STAGES else "vae" if stage == VAE_DECODER else stage


def _release_components(base: BaseModel, keep: set[str]) -> None:
    """Drop the PyTorch components of a base model the exporter loaded that no stage still needs."""
    names = base.spec.text_encoder_names
    base.text_encoders = tuple(m if n in keep else None for m, n in zip(base.text_encoders, names, strict=True))
    base.unet = base.unet if UNET in keep else None
    base.vae = base.vae if "vae" in keep else None
    _release_memory()


def _trace_stages(
    base: BaseModel,
    recipe: Recipe,
    deployment: Deployment,
    merge_lora: LoraWeights | None,
    staging: ExportStaging,
    refit_targets: list[str] | None,
    owned: bool,
    progress: bool,
) -> tuple[dict[str, dict], list[TracedStage]]:
    """Stages that passed in an interrupted export with the same inputs, and every other stage traced.

    `owned`: the exporter loaded `base`, so each component is freed once its last stage is traced.
    """
    passed, traced = {}, []
    builders = stage_builders(base, deployment, merge_lora)
    for tokenizer, name in zip(base.tokenizers, base.spec.text_encoder_names, strict=True):
        tokenizer.save_pretrained(staging.root / tokenizer_dir_name(name))
    for done, (name, build) in enumerate(tqdm(builders, desc="export: trace", unit="stage", disable=not progress)):
        record = staging.passed(name)
        if record is not None:
            passed[name] = record
        else:
            stage = build()
            targets = refit_targets if name == UNET else None
            traced.append(trace_stage(stage, staging.fresh_stage_dir(name), recipe, targets))
            del stage
        if owned:
            _release_components(base, {_component(later) for later, _ in builders[done + 1 :]})
        _release_memory()
    return passed, traced


def _check_stages(traced: list[TracedStage], staging: ExportStaging, fingerprint: str, progress: bool) -> dict[str, dict]:
    """Check every traced stage in onnxruntime, one at a time; keep those that pass, report all that fail."""
    checked, failures = {}, []
    for stage in tqdm(traced, desc="export: check", unit="stage", disable=not progress):
        try:
            record = {"base_fingerprint": fingerprint, **check_traced(stage)}
        except ExportParityError as exc:
            failures.append(str(exc))
        else:
            staging.mark_passed(stage.name, record)
            checked[stage.name] = record
        stage.reference = None
        _release_memory()
    if failures:
        kept = sorted(path.name for path in staging.root.iterdir() if staging.passed(path.name))
        raise ExportParityError(
            "; ".join(failures) + f". The export is refused; the stages that passed ({', '.join(kept) or 'none'}) "
            f"are kept in {staging.root}, and the same export run again redoes only the others"
        )
    return checked


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
    needs. Raises ExportParityError when a stage disagrees with PyTorch beyond its tolerance;
    `out_dir` is then left untouched and the stages that passed stay staged for the next run.
    A model given by name or folder is loaded here and freed before onnxruntime checks the stages.
    """
    if not isinstance(model, BaseModel):
        check_export_memory(resolve_model_dir(model), merged_lora=merge_lora is not None)
    # A BaseModel given by the caller stays theirs; one loaded here is freed once the stages are traced.
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
    fingerprint = base.spec.fingerprint
    with ExportStaging(out, resume_key(base, deployment, recipe, refit_targets is not None)) as staging:
        passed, traced = _trace_stages(
            base, recipe, deployment, merge_lora, staging, refit_targets, not isinstance(model, BaseModel), progress
        )
        base = merge_lora = None  # free the PyTorch model (when loaded here) before onnxruntime loads stages
        _release_memory()
        checked = _check_stages(traced, staging, fingerprint, progress)
        stages = {name: passed[name] if name in passed else checked[name] for name in deployment.stages}
        manifest = manifest_document(deployment, recipe.to_dict(), stages)
        write_manifests(staging.root, manifest)
        if tensorrt:
            from clif_serve.export.tensorrt import build_engines

            for name, engine in build_engines(open_export(staging.root), recipe, progress=progress).items():
                stages[name]["tensorrt"] = engine
            write_manifests(staging.root, manifest)
        staging.move_into_place()
    return open_export(out)
