"""An export folder on disk: its manifest (holding the `Deployment`), stage files and tokenizers.

```
EXPORT_DIR/
  manifest.json            {"format", "format_version", "deployment": Deployment.to_dict(),
                            "recipe": the export recipe, "stages": {name: stage record}}
  tokenizer/ tokenizer_2/  copies of the base model's tokenizer folders (tokenizer_2 for SDXL)
  text_encoder/model.onnx  (+ model.onnx.data)     text_encoder_2/ for SDXL
  unet/model.onnx          plain UNet (or with the deployment's merged LoRA set)
  unet/weight_map.json     ONNX initializer -> UNet parameter (only for refittable TensorRT exports)
  unet_lora/model.onnx     UNet with LoRA A/B inputs for onnxruntime adapters (optional)
  vae_decoder/model.onnx
  <stage>/manifest.json    the stage record (also under "stages" in the top-level manifest)
  <stage>/model.plan       TensorRT engine (only with `--tensorrt`)
```
A stage record holds the export's facts about one stage: file, opset, timings, parity figures.
The Triton repository copies `manifest.json` (and the tokenizers) next to each Python model, which
reads it with `read_folder`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from clif_serve.contract.deployment import Deployment
from clif_serve.contract.stages import tokenizer_dir_name
from clif_serve.errors import ModelFolderError
from clif_serve.models.spec import ModelSpec

MANIFEST = "manifest.json"
EXPORT_FORMAT = "clif-serve/export"
EXPORT_FORMAT_VERSION = 2
ONNX_FILE = "model.onnx"
ENGINE_FILE = "model.plan"
STAGE_MANIFEST = "manifest.json"
WEIGHT_MAP_FILE = "weight_map.json"


@dataclass(frozen=True)
class ExportFolder:
    """An export folder: its manifest and the `Deployment` it describes."""

    root: Path
    manifest: dict
    deployment: Deployment

    @property
    def spec(self) -> ModelSpec:
        return self.deployment.spec

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def onnx_path(self, stage: str) -> Path:
        return self.root / stage / ONNX_FILE

    def engine_path(self, stage: str) -> Path:
        return self.root / stage / ENGINE_FILE

    def stage_record(self, stage: str) -> dict:
        """What the export recorded about one stage (file, opset, parity, timings, ...)."""
        return self.manifest["stages"][stage]

    def tokenizers(self) -> tuple:
        """The base model's tokenizers (`CLIPTokenizer`), one per text encoder."""
        from transformers import CLIPTokenizer  # here, not at import: the contract stays light

        return tuple(
            CLIPTokenizer.from_pretrained(self.root / tokenizer_dir_name(name), local_files_only=True)
            for name in self.spec.text_encoder_names
        )


def manifest_document(deployment: Deployment, recipe: dict, stages: dict[str, dict]) -> dict:
    """The top-level manifest of an export."""
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "deployment": deployment.to_dict(),
        "recipe": recipe,
        "stages": stages,
    }


def write_manifests(root: Path, manifest: dict) -> None:
    """The top-level manifest and each stage's record as `<stage>/manifest.json`."""
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1))
    for name, record in manifest["stages"].items():
        (root / name / STAGE_MANIFEST).write_text(json.dumps(record, indent=1))


def read_folder(root: str | Path) -> ExportFolder:
    """Read a folder's manifest (an export folder, or a model folder of a Triton repository)."""
    folder = Path(root)
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        raise ModelFolderError(f"{folder}: not an export folder ({MANIFEST} is missing); run `clif-serve export`")
    try:
        manifest = json.loads(manifest_file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelFolderError(f"{manifest_file}: not valid JSON ({exc})") from exc
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != EXPORT_FORMAT
        or manifest.get("format_version") != EXPORT_FORMAT_VERSION
    ):
        raise ModelFolderError(
            f"{manifest_file}: not a clif-serve export manifest of version {EXPORT_FORMAT_VERSION} "
            "(re-export with this clif-serve)"
        )
    return ExportFolder(folder, manifest, Deployment.from_dict(manifest["deployment"]))


def open_export(root: str | Path) -> ExportFolder:
    """Read an export folder and check its stages and tokenizers exist."""
    folder = read_folder(root)
    missing = [stage for stage in folder.deployment.stages if not folder.onnx_path(stage).is_file()]
    missing += [
        tokenizer_dir_name(name)
        for name in folder.spec.text_encoder_names
        if not (folder.root / tokenizer_dir_name(name)).is_dir()
    ]
    if missing:
        raise ModelFolderError(f"{folder.root}: incomplete export; missing: {', '.join(missing)}")
    return folder
