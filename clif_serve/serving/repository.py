"""`clif-serve repo`: an export folder -> a Triton model repository, from the `model_repo/` template.

```
REPO/
  text_encoder/  (text_encoder_2/)  unet/  (unet_lora/)  vae_decoder/    stage models
      config.pbtxt   1/model.onnx (+ .data) and, for --backend python, 1/model.py + 1/manifest.json
                     (--backend tensorrt: 1/model.plan)
  clif_pipeline/    config.pbtxt  1/model.py  1/manifest.json  1/tokenizer*/
  clif_concepts/    config.pbtxt  1/model.py  1/manifest.json
```
`python` runs the ONNX files with onnxruntime inside Python-backend models (what the tritonserver
of nvidia-pytriton can run); `onnxruntime` and `tensorrt` write native configs for NVIDIA's
tritonserver container. `clif_pipeline` and `clif_concepts` are Python-backend models always.
Which stages are written follows the deployment's LoRA routing on the backend (`unet_lora` only
where a request can reach it). Every Python-backend model gets the export manifest (the
`Deployment`) and one typed `ModelParameters`; `clif_pipeline`'s config also publishes the request
defaults and limits (`request_parameters`). `--device cuda` writes the Python-backend models with
KIND_GPU instances and the python stage models with `FORCE_CPU_ONLY_INPUT_TENSORS: no` (the
GPU-resident BLS path, docs/performance.md section 4; not run here, no GPU). The repository is written to a temporary folder
next to `out` and renamed into place. The weights (ONNX files, TensorRT engines) are hard links to
the export's where the file system allows (writing into them in place changes the export); every
other file is a copy of its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import replace
from pathlib import Path

from clif_serve.contract.folder import MANIFEST, ExportFolder, open_export
from clif_serve.contract.stages import VAE_DECODER, tokenizer_dir_name
from clif_serve.errors import InputError, ModelFolderError
from clif_serve.paths import staging_dir
from clif_serve.serving.configs import model_config, write_config
from clif_serve.serving.options import RepoOptions
from clif_serve.serving.parameters import FORCE_CPU_ONLY_INPUT_TENSORS, request_parameters
from clif_serve.serving.protocol import (
    CONCEPTS_INPUTS,
    CONCEPTS_MODEL,
    CONCEPTS_OUTPUTS,
    PIPELINE_INPUTS,
    PIPELINE_MODEL,
    PIPELINE_OUTPUTS,
)
from clif_serve.serving.signatures import stage_fields

TEMPLATE_ENV = "CLIF_SERVE_MODEL_REPO_TEMPLATE"
VERSION = "1"
MODEL_PY = "model.py"
STAGE_TEMPLATE = "stage"


def template_dir() -> Path:
    """The model repository template: `$CLIF_SERVE_MODEL_REPO_TEMPLATE`, else the one shipped in the package."""
    explicit = os.environ.get(TEMPLATE_ENV)
    folder = Path(explicit) if explicit else Path(__file__).resolve().parent / "model_repo"
    if not (folder / STAGE_TEMPLATE).is_dir():
        raise ModelFolderError(
            f"{folder}: no model repository template here; set {TEMPLATE_ENV} to the model_repo/ folder of clif-serve"
        )
    return folder


def _place(source: Path, target: Path, link: bool = False) -> None:
    """Copy a file into the repository; `link`: hard-link it instead (large weights), copying when linking
    is not possible. Small files (model.py, manifests) are always copies, so editing a repository's
    `model.py` never edits the installed template or the export, nor any other repository."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if link:
        with contextlib.suppress(OSError):
            os.link(source, target)
            return
    shutil.copy2(source, target)


class _Builder:
    def __init__(self, folder: ExportFolder, options: RepoOptions, root: Path, template: Path):
        self.folder = folder
        self.deployment = folder.deployment
        self.options = options
        self.root = root
        self.template = template
        self.adapters = options.takes_adapters
        # The python models run the routing of this backend: adapters only where unet_lora takes them.
        self.models = replace(options.models, lora_adapters=self.adapters)
        self.routing = self.models.routing(self.deployment)
        self.parameters = self.models.to_config()
        # A CUDA repository: KIND_GPU python models; stages take BLS inputs in the memory they come in.
        self.cuda = options.device == "cuda"
        self.instance_kind = "KIND_GPU" if self.cuda else None
        self.stage_parameters = {**self.parameters, **({FORCE_CPU_ONLY_INPUT_TENSORS: "no"} if self.cuda else {})}

    def version_dir(self, model: str) -> Path:
        return self.root / model / VERSION

    def stages(self) -> list[str]:
        """The stage models a request can reach on this backend."""
        return [*self.deployment.spec.text_encoder_names, *self.routing.stages, VAE_DECODER]

    def stage(self, name: str) -> None:
        backend = self.options.backend
        inputs, outputs = stage_fields(self.deployment, name, self.adapters)
        is_text = name in self.deployment.spec.text_encoder_names
        config = model_config(
            self.template / STAGE_TEMPLATE / f"{backend}.pbtxt",
            name,
            inputs,
            outputs,
            max_batch_size=self.deployment.batch.max,
            instances=self.options.stage_instances,
            queue_delay_us=self.options.text_encoder_delay_us if is_text else self.options.unet_delay_us,
            parameters=self.stage_parameters if backend == "python" else None,
            instance_kind=self.instance_kind if backend == "python" else None,
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
            _place(engine, target / engine.name, link=True)
            return
        for source in sorted(self.folder.stage_dir(name).glob("model.onnx*")):
            _place(source, target / source.name, link=True)
        if backend == "python":
            _place(self.template / STAGE_TEMPLATE / MODEL_PY, target / MODEL_PY)
            _place(self.folder.root / MANIFEST, target / MANIFEST)

    def python_model(self, name: str, inputs, outputs, instances: int | None = None, published=None) -> None:
        config = model_config(
            self.template / name / "config.pbtxt",
            name,
            inputs,
            outputs,
            instances=instances,
            parameters={**self.parameters, **(published or {})},
            instance_kind=self.instance_kind,
        )
        write_config(config, self.root / name / "config.pbtxt")
        target = self.version_dir(name)
        _place(self.template / name / MODEL_PY, target / MODEL_PY)
        _place(self.folder.root / MANIFEST, target / MANIFEST)

    def pipeline(self) -> None:
        self.python_model(
            PIPELINE_MODEL,
            PIPELINE_INPUTS,
            PIPELINE_OUTPUTS,
            self.options.pipeline_instances,
            published=request_parameters(self.deployment, self.models),
        )
        for encoder in self.deployment.spec.text_encoder_names:
            name = tokenizer_dir_name(encoder)
            shutil.copytree(self.folder.root / name, self.version_dir(PIPELINE_MODEL) / name)

    def concepts(self) -> None:
        self.python_model(CONCEPTS_MODEL, CONCEPTS_INPUTS, CONCEPTS_OUTPUTS)


def build_repository(
    export_dir: str | Path, out: str | Path, options: RepoOptions | None = None, overwrite: bool = False
) -> Path:
    """Write a Triton model repository for an export folder; returns its path."""
    options = options or RepoOptions()
    options.validate()
    folder = open_export(export_dir)
    target = Path(out).resolve()
    if target.exists() and not overwrite:
        raise InputError("out", f"{target} already exists (pass --force to replace it)")
    template = template_dir()
    staging = staging_dir(target)
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
