"""One loading path for every base model: `tiny`, `tiny-xl` or a local diffusers folder.

Only local folders are read (`local_files_only=True`); nothing is ever fetched from a hub.
A folder is checked for the SD1.5 or SDXL layout first, and an incomplete one is refused with
the list of what is missing. A component holding only variant weights (`*.fp16.safetensors`, as
checkpoints are often shipped) is loaded with diffusers'/transformers' `variant`, and cast to the
requested dtype. A component that still cannot be loaded (a corrupt or truncated file, a config
that does not fit the weights) raises ModelFolderError naming it, in one line.

A base model loads in two parts. `load_text_model` loads what a concept pack and a request check
need: the tokenizers, the text encoders and the whole `ModelSpec`, whose UNet and VAE facts
(geometry, LoRA targets) come from their `config.json` alone (the UNet built on the meta device,
no weight read). `load_image_side` then adds the UNet and the VAE; `load_base_model` does both.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from safetensors import SafetensorError, safe_open
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
from transformers.utils import logging as transformers_logging

from clif_serve.errors import ModelFolderError
from clif_serve.models.spec import ModelKind, ModelSpec, TextEncoderSpec, fingerprint_of
from clif_serve.models.tiny import EMBEDDED_MODELS, embedded_model_dir

LORA_TARGET_SUFFIXES = ("to_q", "to_k", "to_v", "to_out.0")
_WEIGHT_FILES = ("*.safetensors", "*.bin")
# Weight files as diffusers and transformers name them: `<name>[.<variant>][-0000k-of-0000n].<ext>`.
_WEIGHT_FILE = re.compile(r"(?:model|diffusion_pytorch_model)(?:\.(\w+))?(?:-\d{5}-of-\d{5})?\.(?:safetensors|bin)")
# Among variant-only components, the variant to load when there are several.
_PREFERRED_VARIANTS = ("fp16", "bf16")
_COMMON = ("text_encoder", "tokenizer", "unet", "vae", "scheduler")
_SDXL_EXTRA = ("text_encoder_2", "tokenizer_2")


@dataclass
class TextModel:
    """The text side of a base model (tokenizers, text encoders) and its whole weight-free `ModelSpec`;
    no UNet or VAE weight is loaded."""

    path: Path
    spec: ModelSpec
    tokenizers: tuple[CLIPTokenizer, ...]
    text_encoders: tuple[torch.nn.Module, ...]


@dataclass
class BaseModel(TextModel):
    """A loaded base model: the text side plus the UNet and the VAE."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL


def resolve_model_dir(model: str | Path) -> Path:
    """Map `tiny` / `tiny-xl` to their cached folders; otherwise check that the folder exists."""
    if str(model) in EMBEDDED_MODELS:
        return embedded_model_dir(str(model))
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ModelFolderError(
            f"model {str(model)!r}: no such folder (give 'tiny', 'tiny-xl' or a local diffusers folder)"
        )
    return path


def weight_variant(folder: Path) -> str | None:
    """The variant to load a component folder with: None when it has plain weight files, else e.g. 'fp16'."""
    variants = {match.group(1) for p in folder.iterdir() if (match := _WEIGHT_FILE.fullmatch(p.name))}
    if None in variants or not variants:
        return None
    for preferred in _PREFERRED_VARIANTS:
        if preferred in variants:
            return preferred
    return sorted(variants)[0]


def _unloadable(path: Path, component: str, exc: Exception) -> ModelFolderError:
    """A one-line error naming the component that could not be loaded and why."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    if len(reason) > 300:
        reason = reason[:297] + "..."
    return ModelFolderError(f"{path / component}: cannot be loaded ({reason})")


_LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, SafetensorError, json.JSONDecodeError)


def _load_component(path: Path, component: str, load, **options):
    """`load(folder, **options)` for one component (local files only, the folder's weight variant);
    its errors become one-line ModelFolderErrors."""
    folder = path / component
    try:
        if (folder / "config.json").is_file():  # a model (tokenizers have no weights, so no variant)
            options["variant"] = weight_variant(folder)
        return load(folder, local_files_only=True, **options)
    except _LOAD_ERRORS as exc:
        raise _unloadable(path, component, exc) from exc


def component_weight_bytes(path: Path) -> dict[str, int]:
    """Bytes each component's weights take once loaded in float32, read from the safetensors headers
    (nothing else is read; a `.bin` file counts its size on disk)."""
    sizes = {}
    for folder in sorted(p for p in path.iterdir() if p.is_dir()):
        files = [p for p in folder.iterdir() if _WEIGHT_FILE.fullmatch(p.name)]
        variant = weight_variant(folder) if files else None
        total = 0
        for file in files:
            if _WEIGHT_FILE.fullmatch(file.name).group(1) != variant:
                continue
            if file.suffix == ".bin":
                total += file.stat().st_size
                continue
            try:
                with safe_open(str(file), framework="pt") as weights:
                    total += 4 * sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())
            except (OSError, SafetensorError) as exc:
                raise _unloadable(path, folder.name, exc) from exc
        if total:
            sizes[folder.name] = total
    return sizes


def _missing_files(folder: Path, component: str) -> list[str]:
    if not folder.is_dir():
        return [f"{component}/"]
    if component.startswith("tokenizer"):
        has_vocab = (folder / "tokenizer.json").is_file() or (
            (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
        )
        return [] if has_vocab else [f"{component}/tokenizer.json (or vocab.json + merges.txt)"]
    if component == "scheduler":
        return [] if (folder / "scheduler_config.json").is_file() else [f"{component}/scheduler_config.json"]
    missing = [] if (folder / "config.json").is_file() else [f"{component}/config.json"]
    if not any(any(folder.glob(pattern)) for pattern in _WEIGHT_FILES):
        missing.append(f"{component}/ weights (*.safetensors or *.bin)")
    return missing


def detect_layout(path: Path) -> tuple[ModelKind, dict]:
    """Return ('sd15' | 'sdxl', model_index) for a complete folder, or raise naming what is missing."""
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ModelFolderError(f"{path}: not a diffusers folder (model_index.json is missing)")
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelFolderError(f"{index_file}: not valid JSON ({exc})") from exc
    has_second = isinstance(index.get("text_encoder_2"), list) and index["text_encoder_2"][0] is not None
    kind: ModelKind = "sdxl" if has_second else "sd15"
    components = _COMMON + (_SDXL_EXTRA if has_second else ())
    missing = [item for component in components for item in _missing_files(path / component, component)]
    if missing:
        layout = "SDXL" if has_second else "SD1.5"
        raise ModelFolderError(f"{path}: incomplete {layout} diffusers folder; missing: {', '.join(missing)}")
    return kind, index


def _text_encoder_spec(name: str, encoder, tokenizer: CLIPTokenizer, kind: ModelKind) -> TextEncoderSpec:
    config = encoder.config
    projection = getattr(encoder, "text_projection", None)
    return TextEncoderSpec(
        name=name,
        vocab_size=int(encoder.get_input_embeddings().weight.shape[0]),
        hidden_size=int(config.hidden_size),
        max_length=int(min(tokenizer.model_max_length, config.max_position_embeddings)),
        bos_token_id=int(tokenizer.bos_token_id),
        eos_token_id=int(tokenizer.eos_token_id),
        pad_token_id=int(tokenizer.pad_token_id),
        hidden_layer="penultimate" if kind == "sdxl" else "last",
        pooled_size=int(projection.out_features if projection is not None else config.hidden_size),
    )


def model_fingerprint(tokenizers, text_encoders) -> str:
    """Fingerprint of a base model's text side: tokenizer vocabularies and token-embedding matrices."""
    parts = []
    for index, (tokenizer, encoder) in enumerate(zip(tokenizers, text_encoders, strict=True)):
        vocab = json.dumps(sorted(tokenizer.get_vocab().items())).encode()
        weight = encoder.get_input_embeddings().weight.detach().to("cpu", torch.float32).contiguous()
        parts.append((f"tokenizer{index}", vocab))
        parts.append((f"token_embedding{index}", weight.numpy().tobytes()))
    return fingerprint_of(parts)


def _lora_targets(unet: UNet2DConditionModel) -> dict[str, tuple[int, int]]:
    return {
        name: (module.in_features, module.out_features)
        for name, module in unet.named_modules()
        if isinstance(module, torch.nn.Linear) and name.endswith(LORA_TARGET_SUFFIXES)
    }


def _config_only(path: Path, component: str, cls):
    """The component built from its `config.json` on the meta device: its config and module tree, no weights."""
    try:
        config = cls.load_config(path / component, local_files_only=True)
        with torch.device("meta"):
            return cls.from_config(config)
    except _LOAD_ERRORS as exc:
        raise _unloadable(path, component, exc) from exc


def _model_spec(path: Path, kind: ModelKind, index: dict, tokenizers, text_encoders, names) -> ModelSpec:
    """The spec of a base model from its text side and the UNet's, VAE's and scheduler's configs."""
    unet = _config_only(path, "unet", UNet2DConditionModel)
    vae_config = _config_only(path, "vae", AutoencoderKL).config
    try:
        scheduler_config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    except json.JSONDecodeError as exc:
        raise _unloadable(path, "scheduler", exc) from exc
    vae_scale = 2 ** (len(vae_config.block_out_channels) - 1)
    return ModelSpec(
        kind=kind,
        fingerprint=model_fingerprint(tokenizers, text_encoders),
        text_encoders=tuple(
            _text_encoder_spec(name, enc, tok, kind)
            for name, enc, tok in zip(names, text_encoders, tokenizers, strict=True)
        ),
        latent_channels=int(unet.config.in_channels),
        sample_size=int(unet.config.sample_size),
        vae_scale_factor=vae_scale,
        vae_scaling_factor=float(vae_config.scaling_factor),
        scheduler_class=str(scheduler_config["_class_name"]),
        scheduler_config=scheduler_config,
        force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", False)),
        image_multiple=vae_scale * 2 ** (len(unet.config.block_out_channels) - 1),
        lora_targets=_lora_targets(unet),
    )


def load_text_model(
    model: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> TextModel:
    """Load the tokenizers and text encoders of `tiny`, `tiny-xl` or a local SD1.5/SDXL diffusers folder
    (eval mode, gradients off) and the model's whole spec; the UNet and VAE weights are not read."""
    path = resolve_model_dir(model)
    kind, index = detect_layout(path)
    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    names = ("text_encoder",) if kind == "sd15" else ("text_encoder", "text_encoder_2")
    tokenizer_dirs = ("tokenizer",) if kind == "sd15" else ("tokenizer", "tokenizer_2")
    tokenizers = tuple(_load_component(path, sub, CLIPTokenizer.from_pretrained) for sub in tokenizer_dirs)
    encoder_classes = (CLIPTextModel, CLIPTextModelWithProjection)
    text_encoders = tuple(
        _load_component(path, name, encoder_classes[i if kind == "sdxl" else 0].from_pretrained, dtype=dtype)
        for i, name in enumerate(names)
    )
    for module in text_encoders:
        module.to(device=device).eval().requires_grad_(False)
    spec = _model_spec(path, kind, index, tokenizers, text_encoders, names)
    return TextModel(path, spec, tokenizers, text_encoders)


def load_image_side(text: TextModel) -> BaseModel:
    """Add the UNet and the VAE to a loaded text side, on its device and in its dtype (eval mode, gradients off)."""
    device, dtype = text.text_encoders[0].device, text.text_encoders[0].dtype
    unet = _load_component(text.path, "unet", UNet2DConditionModel.from_pretrained, torch_dtype=dtype)
    vae = _load_component(text.path, "vae", AutoencoderKL.from_pretrained, torch_dtype=dtype)
    for module in (unet, vae):
        module.to(device=device).eval().requires_grad_(False)
    return BaseModel(text.path, text.spec, text.tokenizers, text.text_encoders, unet, vae)


def load_base_model(
    model: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> BaseModel:
    """Load `tiny`, `tiny-xl` or a local SD1.5/SDXL diffusers folder, in eval mode, gradients off."""
    return load_image_side(load_text_model(model, device, dtype))
