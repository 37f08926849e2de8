"""`clif-serve repo`: an export folder -> a Triton model repository, from the `model_repo/` template.

```
REPO/
  text_encoder/  (text_encoder_2/)  unet/  (unet_lora/)  vae_decoder/    stage models
      config.pbtxt   1/model.onnx (+ .data) and, for --backend python, 1/model.py
                     (--backend tensorrt: 1/model.plan)
  clif_pipeline/    config.pbtxt  1/model.py  1/manifest.json  1/tokenizer*/
  clif_concepts/    config.pbtxt  1/model.py  1/manifest.json
```
`python` runs the ONNX files with onnxruntime inside Python-backend models (what the tritonserver
of nvidia-pytriton can run); `onnxruntime` and `tensorrt` write native configs for NVIDIA's
tritonserver container. `clif_pipeline` and `clif_concepts` are Python-backend models always.
The repository is written to a temporary folder next to `out` and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from clif_serve.concepts.pack import DEFAULT_MAX_PACK_BYTES
from clif_serve.errors import InputError, ModelFolderError
from clif_serve.export.layout import (
    MANIFEST,
    ONNX_FILE,
    UNET_LORA_STAGE,
    UNET_STAGE,
    VAE_DECODER_STAGE,
    ExportFolder,
    open_export,
    tokenizer_dir_name,
)
from clif_serve.runtime.request import RequestLimits
from clif_serve.serving.configs import model_config, write_config
from clif_serve.serving.options import RepoOptions
from clif_serve.serving.protocol import (
    CONCEPTS_INPUTS,
    CONCEPTS_MODEL,
    CONCEPTS_OUTPUTS,
    PIPELINE_INPUTS,
    PIPELINE_MODEL,
    PIPELINE_OUTPUTS,
)
from clif_serve.serving.signatures import LORA_ID_INPUT, concept_rows, stage_signature

TEMPLATE_ENV = "CLIF_SERVE_MODEL_REPO_TEMPLATE"
VERSION = "1"
MODEL_PY = "model.py"
STAGE_TEMPLATE = "stage"


def template_dir() -> Path:
    """The `model_repo/` template: `$CLIF_SERVE_MODEL_REPO_TEMPLATE`, else the one next to the package."""
    explicit = os.environ.get(TEMPLATE_ENV)
    folder = Path(explicit) if explicit else Path(__file__).resolve().parents[2] / "model_repo"
    if not (folder / STAGE_TEMPLATE).is_dir():
        raise ModelFolderError(
            f"{folder}: no model repository template here; set {TEMPLATE_ENV} to the model_repo/ folder of clif-serve"
        )
    return folder


def request_limits(folder: ExportFolder) -> RequestLimits:
    """Request limits from the export: image sizes valid for both axes, images that fit a UNet batch."""
    image = folder.manifest["image"]
    (height_min, _, height_max), (width_min, _, width_max) = image["height"], image["width"]
    max_batch = folder.manifest["recipe"]["batch"][2]
    return RequestLimits(
        min_size=max(height_min, width_min),
        max_size=min(height_max, width_max),
        max_images=max(1, max_batch // 2),
    )


def _place(source: Path, target: Path) -> None:
    """Hard-link a file (large ONNX weights), or copy it when linking is not possible."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


class _Builder:
    def __init__(self, folder: ExportFolder, options: RepoOptions, root: Path, template: Path):
        self.folder = folder
        self.options = options
        self.root = root
        self.template = template
        self.spec = folder.spec
        recipe = folder.manifest["recipe"]
        self.max_batch = recipe["batch"][2]
        self.rows = concept_rows(self.spec, recipe["concept_rows"][2])
        self.lora_stage = (
            UNET_LORA_STAGE if options.backend == "python" and folder.has_stage(UNET_LORA_STAGE) else ""
        )
        self.store = {"concept_store": options.concept_store}
        self.lora = {"lora_stage": self.lora_stage, "merged_lora": folder.merged_lora or ""}

    def version_dir(self, model: str) -> Path:
        return self.root / model / VERSION

    def stages(self) -> list[str]:
        names = [*self.spec.text_encoder_names, UNET_STAGE, VAE_DECODER_STAGE]
        return names + ([self.lora_stage] if self.lora_stage else [])

    def stage(self, name: str) -> None:
        backend = self.options.backend
        inputs, outputs = stage_signature(self.spec, name, self.rows)
        is_text = name in self.spec.text_encoder_names
        delay = self.options.text_encoder_delay_us if is_text else self.options.unet_delay_us
        parameters = {}
        if backend == "python":
            parameters = {"model_file": ONNX_FILE, "intra_op_threads": self.options.intra_op_threads}
            if name == UNET_LORA_STAGE:
                parameters.update(adapter_input=LORA_ID_INPUT, **self.store)
        config = model_config(
            self.template / STAGE_TEMPLATE / f"{backend}.pbtxt",
            name,
            inputs,
            outputs,
            max_batch_size=self.max_batch,
            instances=self.options.stage_instances,
            queue_delay_us=delay,
            parameters=parameters,
        )
        write_config(config, self.root / name / "config.pbtxt")
        target = self.version_dir(name)
        if backend == "tensorrt":
            engine = self.folder.engine_path(name)
            if not engine.is_file():
                raise ModelFolderError(
                    f"{engine}: no TensorRT engine; build the engines with `clif-serve export --tensorrt` on the "
                    "serving GPU, or use --backend onnxruntime"
                )
            _place(engine, target / engine.name)
            return
        for source in sorted(self.folder.stage_dir(name).glob("model.onnx*")):
            _place(source, target / source.name)
        if backend == "python":
            _place(self.template / STAGE_TEMPLATE / MODEL_PY, target / MODEL_PY)
        if name == UNET_LORA_STAGE:  # its adapters live in the concept store of this base model
            _place(self.folder.root / MANIFEST, target / MANIFEST)

    def python_model(
        self, name: str, inputs, outputs, parameters: dict, instances: int | None = None
    ) -> None:
        config = model_config(
            self.template / name / "config.pbtxt",
            name,
            inputs,
            outputs,
            instances=instances,
            parameters=parameters,
        )
        write_config(config, self.root / name / "config.pbtxt")
        target = self.version_dir(name)
        _place(self.template / name / MODEL_PY, target / MODEL_PY)
        _place(self.folder.root / MANIFEST, target / MANIFEST)

    def pipeline(self) -> None:
        limits = request_limits(self.folder)
        parameters = {
            **self.lora,
            "concept_rows": self.rows,
            "limits": json.dumps(asdict(limits), sort_keys=True),
            **self.store,
        }
        self.python_model(
            PIPELINE_MODEL,
            PIPELINE_INPUTS,
            PIPELINE_OUTPUTS,
            parameters,
            instances=self.options.pipeline_instances,
        )
        for encoder in self.spec.text_encoder_names:
            name = tokenizer_dir_name(encoder)
            shutil.copytree(self.folder.root / name, self.version_dir(PIPELINE_MODEL) / name)

    def concepts(self) -> None:
        parameters = {
            **self.lora,
            "max_pack_bytes": self.options.max_pack_bytes or DEFAULT_MAX_PACK_BYTES,
            **self.store,
        }
        self.python_model(CONCEPTS_MODEL, CONCEPTS_INPUTS, CONCEPTS_OUTPUTS, parameters)


def build_repository(
    export_dir: str | Path, out: str | Path, options: RepoOptions | None = None, overwrite: bool = False
) -> Path:
    """Write a Triton model repository for an export folder; returns its path."""
    options = options or RepoOptions()
    options.check()
    folder = open_export(export_dir)
    target = Path(out).resolve()
    if target.exists() and not overwrite:
        raise InputError("out", f"{target} already exists (pass --force to replace it)")
    template = template_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        builder = _Builder(folder, options, staging, template)
        for stage in builder.stages():
            builder.stage(stage)
        builder.pipeline()
        builder.concepts()
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
