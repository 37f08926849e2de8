"""The contract of an export folder, shared by the exporter, the ONNX Runtime executor and serving.

```
EXPORT_DIR/
  manifest.json            {"format", "format_version", "model_spec": ModelSpec.to_dict(), "recipe",
                            "image": {"height", "width": [min, opt, max], "multiple"}, "stages": {name: stage manifest}}
  tokenizer/ tokenizer_2/  copies of the base model's tokenizer folders (tokenizer_2 for SDXL)
  text_encoder/model.onnx  (+ model.onnx.data)     text_encoder_2/ for SDXL
  unet/model.onnx          plain UNet (or with one LoRA set merged: stage manifest "merged_lora")
  unet/weight_map.json     ONNX initializer -> UNet parameter name (and whether it is stored transposed)
  unet_lora/model.onnx     UNet with LoRA as onnxruntime adapter inputs (optional)
  vae_decoder/model.onnx
  <stage>/manifest.json    the stage manifest (also under "stages" in the top-level manifest)
  <stage>/model.plan       TensorRT engine (only with `--tensorrt`)
```
Tensor names below are the stage signatures every backend uses. The LoRA inputs of `unet_lora`
are named like the peft keys of `LoraWeights.tensors` (`<module>.lora_A.weight` `[rank, in]`,
`<module>.lora_B.weight` `[out, rank]`), each with a zero initializer so the stage runs without one;
an adapter carries B already multiplied by the LoRA's `alpha / rank`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from transformers import CLIPTokenizer

from clif_serve.errors import ModelFolderError
from clif_serve.models.spec import ModelSpec

MANIFEST = "manifest.json"
EXPORT_FORMAT = "clif-serve/export"
EXPORT_FORMAT_VERSION = 1
ONNX_FILE = "model.onnx"
ENGINE_FILE = "model.plan"
STAGE_MANIFEST = "manifest.json"
WEIGHT_MAP_FILE = "weight_map.json"

TEXT_ENCODER_INPUTS = ("input_ids", "concept_table")
TEXT_ENCODER_OUTPUTS = ("hidden_states", "pooled")
UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states")
UNET_SDXL_INPUTS = ("text_embeds", "time_ids")
UNET_OUTPUTS = ("noise_pred",)
VAE_DECODER_INPUTS = ("latent_sample",)
VAE_DECODER_OUTPUTS = ("image",)

UNET_STAGE = "unet"
UNET_LORA_STAGE = "unet_lora"
VAE_DECODER_STAGE = "vae_decoder"


def tokenizer_dir_name(encoder_name: str) -> str:
    """`text_encoder` -> `tokenizer`, `text_encoder_2` -> `tokenizer_2`."""
    return encoder_name.replace("text_encoder", "tokenizer")


def unet_inputs(spec: ModelSpec) -> tuple[str, ...]:
    """UNet input names for a base model (SDXL adds its micro-conditioning)."""
    return UNET_INPUTS + (UNET_SDXL_INPUTS if spec.kind == "sdxl" else ())


@dataclass(frozen=True)
class ExportFolder:
    """A validated export folder: its manifest, spec and paths."""

    root: Path
    manifest: dict
    spec: ModelSpec

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def onnx_path(self, stage: str) -> Path:
        return self.root / stage / ONNX_FILE

    def engine_path(self, stage: str) -> Path:
        return self.root / stage / ENGINE_FILE

    def has_stage(self, stage: str) -> bool:
        return self.onnx_path(stage).is_file()

    def stage_manifest(self, stage: str) -> dict:
        """The manifest entry of one stage (opset, tensors, dynamic axes, parity, ...)."""
        return self.manifest["stages"][stage]

    @property
    def merged_lora(self) -> str | None:
        """The `set_id` of the LoRA merged into the plain `unet` stage, if any."""
        return self.stage_manifest(UNET_STAGE).get("merged_lora")

    def tokenizers(self) -> tuple[CLIPTokenizer, ...]:
        """The base model's tokenizers, one per text encoder."""
        return tuple(
            CLIPTokenizer.from_pretrained(self.root / tokenizer_dir_name(name), local_files_only=True)
            for name in self.spec.text_encoder_names
        )


def open_export(root: str | Path) -> ExportFolder:
    """Read an export folder's manifest and check its required stages exist."""
    folder = Path(root)
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        raise ModelFolderError(
            f"{folder}: not an export folder ({MANIFEST} is missing); run `clif-serve export`"
        )
    manifest = json.loads(manifest_file.read_text())
    if manifest.get("format") != EXPORT_FORMAT or manifest.get("format_version") != EXPORT_FORMAT_VERSION:
        raise ModelFolderError(
            f"{manifest_file}: not a clif-serve export manifest of version {EXPORT_FORMAT_VERSION}"
        )
    spec = ModelSpec.from_dict(manifest["model_spec"])
    required = [*spec.text_encoder_names, UNET_STAGE, VAE_DECODER_STAGE]
    required += [tokenizer_dir_name(name) for name in spec.text_encoder_names]
    missing = [
        name
        for name in required
        if not (
            (folder / name / ONNX_FILE).is_file()
            or (name.startswith("tokenizer") and (folder / name).is_dir())
        )
    ]
    if missing:
        raise ModelFolderError(f"{folder}: incomplete export; missing: {', '.join(missing)}")
    return ExportFolder(folder, manifest, spec)
