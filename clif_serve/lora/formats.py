"""LoRA files of other tools -> `LoraWeights`, and a pack's LoRA -> the diffusers file format.

Read (the format is detected from the keys):

| format | keys | rank / alpha |
| --- | --- | --- |
| `diffusers` | `unet.<module>.lora_A.weight` / `.lora_B.weight` (`pytorch_lora_weights.safetensors` of `save_lora_weights`); the older `unet.<...>.processor.to_q_lora.down.weight` naming is converted with diffusers' own `convert_unet_state_dict_to_peft` | rank from the shapes; alpha from the `lora_adapter_metadata` JSON (`unet.lora_alpha`, `unet.alpha_pattern`, `unet.use_rslora`), else alpha = rank, as diffusers assumes |
| `peft` | `[base_model.model.]<module>.lora_A.weight` (`get_peft_model_state_dict`, `PeftModel.save_pretrained`) | alpha from `adapter_config.json` next to the file, else alpha = rank |
| `kohya` | `lora_unet_<module path, dots as _>.lora_down.weight` / `.lora_up.weight` / `.alpha` (sd-scripts `networks/lora.py`; SD1.x uses diffusers module paths, SDXL those of the sgm UNet: `input_blocks` / `middle_block` / `output_blocks`) | rank from the shapes; alpha per module from `.alpha`, else alpha = rank (sd-scripts' rule) |

What a pack holds: LoRA on the base UNet's attention projections (`spec.lora_targets`), one rank and
one alpha. A file whose modules share one rank and alpha is carried as is; other files are made
exact at one rank: each module's scale is folded into B and smaller ranks are padded with zero
rows/columns (`B @ A` unchanged). Text-encoder LoRA (`text_encoder.*`, `lora_te*_`) and other UNet
modules (feed-forward, proj_in/out, convolutions, DoRA magnitudes, biases) are refused naming the
key, or left out with `drop_unsupported` (the image then differs from the full LoRA's).

Write: `write_diffusers_lora` saves a pack's LoRA with diffusers' own `save_lora_weights` (with
`lora_adapter_metadata`, so `pipe.load_lora_weights(file)` applies the pack's alpha / rank).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from clif_serve.errors import PackError
from clif_serve.lora.naming import LORA_A_SUFFIX, LORA_B_SUFFIX
from clif_serve.lora.weights import LoraWeights
from clif_serve.models.spec import ModelSpec
from clif_serve.tensor_files import read_tensor_file

FORMATS = ("diffusers", "peft", "kohya")
# File names the tools write into their output folders.
LORA_FILE_NAMES = ("pytorch_lora_weights.safetensors", "adapter_model.safetensors", "pytorch_lora_weights.bin", "adapter_model.bin")
PEFT_CONFIG = "adapter_config.json"
DIFFUSERS_METADATA = "lora_adapter_metadata"
UNET_PREFIX = "unet."
KOHYA_UNET = "lora_unet_"
KOHYA_TEXT_ENCODERS = ("lora_te_", "lora_te1_", "lora_te2_")
TEXT_ENCODER_PREFIXES = ("text_encoder.", "text_encoder_2.", *KOHYA_TEXT_ENCODERS)
_KOHYA_DOWN, _KOHYA_UP, _KOHYA_ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
_PEFT_MODEL_PREFIX = "base_model.model."
_SUPPORTED = "a concept pack holds LoRA for the base UNet's attention projections (to_q, to_k, to_v, to_out.0) only"


@dataclass(frozen=True)
class _Factors:
    """One module's LoRA as a file holds it: `scale * up @ down`."""

    key: str  # the file's key of `down`, for messages
    down: torch.Tensor
    up: torch.Tensor
    alpha: float
    rslora: bool = False

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


@dataclass(frozen=True)
class ImportedLora:
    """A LoRA read from another tool's file, as a pack carries it, and what the import did."""

    lora: LoraWeights
    format: str
    dropped: tuple[str, ...] = ()  # keys left out (drop_unsupported)
    folded: bool = False  # per-module ranks/alphas made one rank with the scales folded into B

    def describe(self) -> str:
        text = f"{self.format} LoRA: {len(self.lora.modules)} modules, rank {self.lora.rank}, alpha {self.lora.alpha:g}"
        if self.folded:
            text += " (the file's per-module ranks/alphas folded into B at one rank)"
        if self.dropped:
            text += f"; left out {len(self.dropped)} tensors a pack cannot hold (e.g. {self.dropped[0]})"
        return text


def lora_file(path: str | Path) -> Path:
    """A file as given, or the LoRA file inside a training output folder."""
    folder = Path(path)
    if not folder.is_dir():
        return folder
    for name in LORA_FILE_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise PackError("lora", f"{folder} holds none of {', '.join(LORA_FILE_NAMES)}")


def read_lora(path: str | Path, spec: ModelSpec, drop_unsupported: bool = False) -> ImportedLora:
    """Read a diffusers, peft or kohya LoRA file (or its folder) for the base model `spec`."""
    file = lora_file(path)
    state, metadata = read_tensor_file(file, field="lora")
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PackError("lora", f"{file.name} does not hold a {{name: tensor}} dictionary")
    dropped: list[str] = []

    def unsupported(key: str, why: str) -> None:
        if not drop_unsupported:
            raise PackError(key, f"{why}; {_SUPPORTED} (drop_unsupported / --drop-unsupported leaves such tensors out)")
        dropped.append(key)

    if any(key.startswith((KOHYA_UNET, *KOHYA_TEXT_ENCODERS)) for key in state):
        found, kind = _kohya_factors(state, spec, unsupported), "kohya"
    else:
        config, kind = _peft_config(file, metadata)
        found = _peft_factors(state, spec, config, unsupported)
    if not found:
        raise PackError("lora", f"{file.name} holds no LoRA for the base UNet's attention projections")
    lora, folded = _as_weights(found)
    return ImportedLora(lora, kind, tuple(dropped), folded)


def _kohya_factors(state: dict[str, torch.Tensor], spec: ModelSpec, unsupported) -> dict[str, _Factors]:
    modules = kohya_module_names(spec)
    found = {}
    for key in sorted(state):
        if key.startswith(TEXT_ENCODER_PREFIXES):
            unsupported(key, "is a text-encoder LoRA tensor")
            continue
        name = key.partition(".")[0]
        if not key.endswith((_KOHYA_DOWN, _KOHYA_UP, _KOHYA_ALPHA)):
            unsupported(key, "is not a kohya LoRA tensor (lora_down.weight, lora_up.weight, alpha)")
        elif name not in modules:
            unsupported(key, "is LoRA for a UNet module that is not an attention projection of the base model")
        elif key.endswith(_KOHYA_DOWN):
            up = state.get(name + _KOHYA_UP)
            if up is None:
                raise PackError(name + _KOHYA_UP, "is missing (every lora_down needs its lora_up)")
            down = state[key]
            alpha = state.get(name + _KOHYA_ALPHA)
            alpha_value = float(alpha) if alpha is not None and float(alpha) != 0 else float(down.shape[0])
            found[modules[name]] = _checked(key, down, up, alpha_value, spec.lora_targets[modules[name]])
    return found


def kohya_module_names(spec: ModelSpec) -> dict[str, str]:
    """kohya LoRA name -> module of the base UNet, for every attention projection a pack may hold.

    sd-scripts names a module `lora_unet_` + its path with dots as underscores, the path in its own UNet:
    diffusers' paths for SD1.x, the sgm UNet's for SDXL (mapped as diffusers' `_maybe_map_sgm_blocks_to_diffusers`
    does, with the layers per block read off the base model's attention modules).
    """
    layers = _layers_per_block(spec) if spec.kind == "sdxl" else None
    return {KOHYA_UNET + _kohya_path(module, layers).replace(".", "_"): module for module in spec.lora_targets}


_DOWN = re.compile(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)")
_MID = re.compile(r"mid_block\.attentions\.0\.(.+)")
_UP = re.compile(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)")


def _kohya_path(module: str, layers_per_block: int | None) -> str:
    if layers_per_block is None:
        return module
    step = layers_per_block + 1  # a down block's resnets + its downsampler; an up block's resnets
    if match := _DOWN.fullmatch(module):
        block, layer, rest = match.groups()
        return f"input_blocks.{1 + int(block) * step + int(layer)}.1.{rest}"
    if match := _MID.fullmatch(module):
        return f"middle_block.1.{match.group(1)}"
    if match := _UP.fullmatch(module):
        block, layer, rest = match.groups()
        return f"output_blocks.{int(block) * step + int(layer)}.1.{rest}"
    return module


def _layers_per_block(spec: ModelSpec) -> int:
    """The UNet's layers per down block: the attention modules of a down block that has them."""
    counts = Counter()
    for module in spec.lora_targets:
        if match := _DOWN.fullmatch(module):
            counts[match.group(1)] = max(counts[match.group(1)], int(match.group(2)) + 1)
    if not counts:
        raise PackError("lora", "the base UNet has no attention modules in its down blocks")
    return max(counts.values())


def _peft_config(file: Path, metadata: dict[str, str]) -> tuple[dict, str]:
    """The LoRA config stored with a peft-named file, and which tool's layout it is."""
    if DIFFUSERS_METADATA in metadata:
        try:
            packed = json.loads(metadata[DIFFUSERS_METADATA])
        except json.JSONDecodeError as exc:
            raise PackError(DIFFUSERS_METADATA, f"is not JSON ({exc})") from exc
        return {k[len(UNET_PREFIX) :]: v for k, v in packed.items() if k.startswith(UNET_PREFIX)}, "diffusers"
    config_file = file.with_name(PEFT_CONFIG)
    if config_file.is_file():
        try:
            return json.loads(config_file.read_text()), "peft"
        except json.JSONDecodeError as exc:
            raise PackError(PEFT_CONFIG, f"is not JSON ({exc})") from exc
    return {}, "diffusers" if file.name.startswith("pytorch_lora_weights") else "peft"


def _peft_factors(state: dict[str, torch.Tensor], spec: ModelSpec, config: dict, unsupported) -> dict[str, _Factors]:
    unet = {}
    for key, value in state.items():
        if key.startswith(TEXT_ENCODER_PREFIXES):
            unsupported(key, "is a text-encoder LoRA tensor")
            continue
        unet[key.removeprefix(UNET_PREFIX).removeprefix(_PEFT_MODEL_PREFIX)] = (key, value)
    if unet and not any(".lora_A." in key for key in unet):  # diffusers' attention-processor naming
        from diffusers.utils import convert_unet_state_dict_to_peft

        originals = {name: key for name, (key, _) in unet.items()}
        converted = convert_unet_state_dict_to_peft({name: value for name, (_, value) in unet.items()})
        unet = {new: (originals[old], value) for (old, _), (new, value) in zip(unet.items(), converted.items(), strict=True)}
    alpha = float(config.get("lora_alpha", 0) or 0)
    patterns = config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora", False))
    found = {}
    for name in sorted(unet):
        key, down = unet[name]
        if not name.endswith((LORA_A_SUFFIX, LORA_B_SUFFIX)):
            unsupported(key, "is not a LoRA A/B weight (lora_A.weight, lora_B.weight)")
            continue
        module = name.rsplit(".lora_", 1)[0]
        if module not in spec.lora_targets:
            unsupported(key, "is LoRA for a UNet module that is not an attention projection of the base model")
            continue
        if not name.endswith(LORA_A_SUFFIX):
            continue
        up_key, up = unet.get(module + LORA_B_SUFFIX, (None, None))
        if up is None:
            raise PackError(key.replace("lora_A", "lora_B"), "is missing (every lora_A needs its lora_B)")
        module_alpha = _pattern_value(patterns, module, alpha or float(down.shape[0]))
        found[module] = _checked(key, down, up, float(module_alpha), spec.lora_targets[module], rslora)
    return found


def _pattern_value(patterns: dict, module: str, default: float) -> float:
    """A per-module override (`alpha_pattern`), matched as peft matches it."""
    from peft.utils.other import get_pattern_key

    key = get_pattern_key(list(patterns), module)
    return patterns.get(key, default)


def _checked(key: str, down: torch.Tensor, up: torch.Tensor, alpha: float, features: tuple[int, int], rslora=False) -> _Factors:
    """A module's factors in float32, checked against the base module's in/out features (errors name the key)."""
    in_features, out_features = features
    if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
        raise PackError(key, f"LoRA shapes {tuple(down.shape)} / {tuple(up.shape)} are not [rank, in] / [out, rank]")
    if down.shape[1] != in_features or up.shape[0] != out_features:
        raise PackError(
            key, f"maps {down.shape[1]}->{up.shape[0]} features, the base module maps {in_features}->{out_features}"
        )
    return _Factors(key, down.detach().to(torch.float32), up.detach().to(torch.float32), alpha, rslora)


def _as_weights(found: dict[str, _Factors]) -> tuple[LoraWeights, bool]:
    """One rank and alpha for every module: carried as is when the file has them, else made so exactly."""
    shapes = {(factors.rank, factors.alpha, factors.rslora) for factors in found.values()}
    if len(shapes) == 1 and not next(iter(shapes))[2]:
        rank, alpha, _ = next(iter(shapes))
        tensors = {}
        for module, factors in found.items():
            tensors[module + LORA_A_SUFFIX] = factors.down
            tensors[module + LORA_B_SUFFIX] = factors.up
        return LoraWeights(tensors, rank=rank, alpha=alpha), False
    rank = max(factors.rank for factors in found.values())
    tensors = {}
    for module, factors in found.items():
        pad = rank - factors.rank
        tensors[module + LORA_A_SUFFIX] = torch.nn.functional.pad(factors.down, (0, 0, 0, pad))
        scaled = (factors.up.to(torch.float64) * factors.scale).to(torch.float32)
        tensors[module + LORA_B_SUFFIX] = torch.nn.functional.pad(scaled, (0, pad))
    return LoraWeights(tensors, rank=rank, alpha=float(rank)), True


def diffusers_metadata(lora: LoraWeights) -> dict:
    """The peft `LoraConfig` fields diffusers stores with a UNet LoRA (`unet_lora_adapter_metadata`)."""
    return {"r": lora.rank, "lora_alpha": lora.alpha, "target_modules": lora.modules}


def diffusers_state_dict(lora: LoraWeights) -> dict[str, torch.Tensor]:
    """The pack's LoRA as diffusers names it in a pipeline's LoRA file (`unet.<module>.lora_A.weight`)."""
    return {UNET_PREFIX + key: value for key, value in _float32(lora).items()}


def _float32(lora: LoraWeights) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in lora.tensors.items()}


def write_diffusers_lora(lora: LoraWeights, path: str | Path) -> Path:
    """Write a pack's LoRA as a diffusers LoRA file, with diffusers' own `save_lora_weights`."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    lora.validate()
    target = Path(path)
    if target.suffix != ".safetensors":
        raise PackError("lora", f"{target.name}: a diffusers LoRA file is written as .safetensors")
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        save_directory=str(target.parent),
        unet_lora_layers=_float32(lora),
        weight_name=target.name,
        unet_lora_adapter_metadata=diffusers_metadata(lora),
    )
    return target
