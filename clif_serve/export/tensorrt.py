"""TensorRT engines from an export folder: FP16 builds over the recipe's profiles, UNet refit for LoRA.

Refits (`UnetRefitter`) have no caller in the serving path: LoRA sets switch by refit only for
exports made with `--tensorrt` and a recipe with `tensorrt.refit = true` (which also makes the
export record the weight map a refit needs). An ordinary export hashes no weights.

`tensorrt` is imported lazily, only here, and only when engines are built or refitted; everything
else in clif-serve works without it. What needs no TensorRT is separate and unit-tested: the
optimisation profiles (`stage_profiles`), the initializer map (`weight_map`) and the refit plan
(`refit`). Building and refitting themselves have only been written against the TensorRT 10
Python API documentation; they have not been run (tensorrt cannot be installed where this was
developed). Note from NVIDIA's documentation: with `BuilderFlag.REFIT` some TensorRT versions may
drop a GEMM bias (11.3 known issue); check a refitted engine's output against ONNX Runtime.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data
from tqdm import tqdm

from clif_serve.contract.folder import ENGINE_FILE, WEIGHT_MAP_FILE, ExportFolder
from clif_serve.contract.stages import UNET, UNET_BANK, VAE_DECODER
from clif_serve.errors import ClifServeError
from clif_serve.export.recipe import Recipe
from clif_serve.export.weight_map import lora_target_initializers, read_weight_map
from clif_serve.lora.math import weight_with_lora
from clif_serve.lora.refit import refit_plan
from clif_serve.lora.weights import LoraWeights

Shape = tuple[int, ...]


class TensorRTUnavailable(ClifServeError):
    """The tensorrt package (and a CUDA GPU) is needed for this step."""


def import_tensorrt():
    """The `tensorrt` module, or a clear error saying what is missing and what works without it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTUnavailable(
            "TensorRT engines need the `tensorrt` Python package and a CUDA GPU (pip install tensorrt on a "
            "machine with NVIDIA drivers); the ONNX export and the ONNX Runtime executor work without it"
        ) from exc
    return tensorrt


def stage_profiles(
    folder: ExportFolder, stage: str, recipe: Recipe
) -> list[dict[str, tuple[Shape, Shape, Shape]]]:
    """For each recipe profile: input name -> (min, opt, max) shapes, from the contract's symbolic axes."""
    deployment = folder.deployment
    signature = deployment.signature(stage)
    profiles = []
    for profile in recipe.tensorrt.profiles:
        narrowed = {"batch": profile.batch, "height": profile.height, "width": profile.width}
        # unet_bank's bank inputs are engine inputs too, at their one shape (min = opt = max).
        tensors = (*signature.inputs, *signature.bank_inputs)
        profiles.append({t.name: deployment.shape_ranges(t, narrowed) for t in tensors})
    return profiles


def engine_stages(folder: ExportFolder) -> tuple[str, ...]:
    """Stages built as engines: the text encoder(s), the UNet stage(s) a request can reach on
    TensorRT (no adapters: `unet_lora` as the base UNet of a merged export, or for regions), `unet_bank`
    when the export has one (for `TensorRTBankRunner`; the Triton tensorrt backend cannot keep its bank),
    the VAE decoder."""
    routing = folder.deployment.routing(adapters=False)
    bank = (UNET_BANK,) if folder.deployment.has_unet_bank else ()
    return (*folder.spec.text_encoder_names, *routing.stages, *bank, VAE_DECODER)


def build_engine(folder: ExportFolder, stage: str, recipe: Recipe, refittable: bool) -> dict:
    """Build `<stage>/model.plan` from the stage's ONNX; return its manifest entry."""
    trt = import_tensorrt()
    started = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(folder.onnx_path(stage))):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ClifServeError(f"TensorRT could not parse {folder.onnx_path(stage)}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(recipe.tensorrt.workspace_gib * 2**30))
    if recipe.tensorrt.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if refittable:
        config.set_flag(trt.BuilderFlag.REFIT)
    profiles = stage_profiles(folder, stage, recipe)
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shapes.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ClifServeError(f"TensorRT failed to build an engine for stage {stage}")
    folder.engine_path(stage).write_bytes(bytes(serialized))
    return {
        "file": f"{stage}/{ENGINE_FILE}",
        "precision": recipe.tensorrt.precision,
        "refittable": refittable,
        "profiles": [{name: [list(s) for s in shapes] for name, shapes in p.items()} for p in profiles],
        "build_seconds": round(time.perf_counter() - started, 3),
        "tensorrt_version": trt.__version__,
    }


def build_engines(folder: ExportFolder, recipe: Recipe, progress: bool = False) -> dict[str, dict]:
    """Build every engine stage (the UNet refittable when the recipe asks); return stage -> engine record."""
    stages = engine_stages(folder)
    return {
        stage: build_engine(folder, stage, recipe, refittable=recipe.tensorrt.refit and stage == UNET)
        for stage in tqdm(stages, desc="tensorrt", unit="engine", disable=not progress)
    }


class OnnxInitializers(Mapping[str, np.ndarray]):
    """Initializers of an ONNX file by name, loaded one at a time (external data read on demand)."""

    def __init__(self, path: Path):
        self._folder = path.parent
        model = onnx.load(str(path), load_external_data=False)
        self._tensors = {tensor.name: tensor for tensor in model.graph.initializer}

    def __getitem__(self, name: str) -> np.ndarray:
        tensor = self._tensors[name]
        if uses_external_data(tensor):
            tensor = onnx.TensorProto.FromString(tensor.SerializeToString())
            load_external_data_for_tensor(tensor, str(self._folder))
        return numpy_helper.to_array(tensor)

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


class UnetRefitter:
    """Switches the LoRA set of a refittable UNet engine by refitting, never by rebuilding.

    Every switch writes every weight the previous set *or* the new one touches (`refit_plan`), and
    also any weight TensorRT reports missing (weights it fused with those), at its value under the
    new set.
    """

    def __init__(self, engine, folder: ExportFolder):
        merged = folder.deployment.merged_lora
        if merged is not None:
            raise ClifServeError(
                f"the unet stage of {folder.root} has LoRA {merged} merged; refitting needs the base "
                "weights: export without --merge-lora for TensorRT"
            )
        weight_map_file = folder.stage_dir(UNET) / WEIGHT_MAP_FILE
        if not weight_map_file.is_file():
            raise ClifServeError(
                f"{weight_map_file} is missing: refits need an export made with --tensorrt and a recipe with "
                "tensorrt.refit = true"
            )
        self._trt = import_tensorrt()
        self._engine = engine
        weight_map = read_weight_map(weight_map_file)
        self._targets = lora_target_initializers(weight_map, sorted(folder.spec.lora_targets))
        self._module_of = {name: (module, transposed) for module, (name, transposed) in self._targets.items()}
        self._base = OnnxInitializers(folder.onnx_path(UNET))
        self._spec = folder.spec
        self.current: LoraWeights | None = None

    def _value(self, name: str, lora: LoraWeights | None) -> np.ndarray:
        """An initializer's value under `lora` (for weights TensorRT reports missing)."""
        if name not in self._base:
            raise ClifServeError(
                f"TensorRT asks for refit weights {name!r}, which is no initializer of the ONNX UNet"
            )
        module, transposed = self._module_of.get(name, (None, False))
        base = self._base[name]
        return base if module is None else weight_with_lora(base, module, transposed, lora)

    def _set(self, refitter, arrays: Mapping[str, np.ndarray]) -> None:
        for name, array in arrays.items():
            if not refitter.set_named_weights(name, self._trt.Weights(array)):
                raise ClifServeError(f"TensorRT refused the refit weights {name} {array.shape}")

    def switch(self, lora: LoraWeights | None) -> list[str]:
        """Refit the engine to `lora` (None: the base UNet); return the initializer names written."""
        trt = self._trt
        if lora is not None:
            lora.validate_against(self._spec.lora_targets)
        plan = refit_plan(self._targets, self._base, self.current, lora)
        if not plan:
            return []
        refitter = trt.Refitter(self._engine, trt.Logger(trt.Logger.WARNING))
        # Keep every array referenced until refit_cuda_engine returns: trt.Weights does not copy.
        arrays = {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in plan.items()}
        self._set(refitter, arrays)
        # Weights TensorRT fused with the ones just set must be supplied too (at their value under `lora`).
        missing = {
            name: np.ascontiguousarray(self._value(name, lora), dtype=np.float32)
            for name in refitter.get_missing_weights()
        }
        self._set(refitter, missing)
        arrays.update(missing)
        if not refitter.refit_cuda_engine():
            raise ClifServeError(f"TensorRT refit failed; missing weights: {refitter.get_missing_weights()}")
        self.current = lora
        return sorted(arrays)
