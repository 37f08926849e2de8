"""UNet LoRA weights as carried by concept packs (peft naming, one adapter per jointly trained set).

Validation is linear in the number of tensors and checks what will be stored: packs and adapters
keep float32, so finiteness is checked after the cast (a float64 1e300 is refused, it would be inf).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from functools import cached_property

import torch

from clif_serve.errors import InputError, PackError
from clif_serve.lora.naming import LORA_A_SUFFIX, LORA_B_SUFFIX

# A LoRA set id (`LoraWeights.set_id`): the first 16 hex digits of a sha256.
SET_ID_PATTERN = re.compile(r"[0-9a-f]{16}")


def validate_set_id(value: str, field: str = "lora_id") -> str:
    """A LoRA set id as given by a request or a file name; InputError naming `field` unless it has the form."""
    if not isinstance(value, str) or not SET_ID_PATTERN.fullmatch(value):
        shown = value if isinstance(value, str) and len(value) <= 40 else f"{str(value)[:40]}..."
        raise InputError(field, f"{shown!r} is not a LoRA set id (16 lowercase hex digits)")
    return value


@dataclass(frozen=True)
class LoraWeights:
    """peft-style LoRA tensors for UNet modules: `<module path>.lora_A.weight` `[r, in]` and `.lora_B.weight` `[out, r]`.

    The effective update of a module is `scale * B @ A` with `scale = alpha / rank`.
    """

    tensors: dict[str, torch.Tensor] = field(hash=False, compare=False)
    rank: int
    alpha: float

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @cached_property
    def modules(self) -> list[str]:
        """Module paths (relative to the UNet) this LoRA touches, sorted."""
        return sorted(key[: -len(LORA_A_SUFFIX)] for key in self.tensors if key.endswith(LORA_A_SUFFIX))

    @cached_property
    def set_id(self) -> str:
        """Content hash: packs trained together carry the same LoRA and therefore the same id."""
        return _content_id(self.tensors, self.rank, self.alpha)

    def validate(self) -> None:
        """Check rank, alpha, pairing, shapes, dtypes and finiteness (as float32); raise PackError naming the field.

        Linear in the number of tensors (one pass over them, set lookups for the pairs).
        """
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise PackError("lora_rank", f"must be an integer >= 1, got {self.rank!r}")
        alpha = float(self.alpha)
        if not math.isfinite(alpha) or alpha <= 0:
            raise PackError("lora_alpha", f"must be a finite number > 0, got {self.alpha!r}")
        if not self.tensors:
            raise PackError("unet", "a LoRA needs at least one lora_A/lora_B pair")
        modules = set(self.modules)
        for key, tensor in self.tensors.items():
            name = f"unet.{key}"
            if not key.endswith((LORA_A_SUFFIX, LORA_B_SUFFIX)):
                raise PackError(name, "is not a peft LoRA tensor (*.lora_A.weight / *.lora_B.weight)")
            if key.endswith(LORA_B_SUFFIX) and key[: -len(LORA_B_SUFFIX)] not in modules:
                raise PackError(name, "has no matching lora_A tensor")
            if not tensor.is_floating_point():
                raise PackError(name, f"must be floating point, got {tensor.dtype}")
            if tensor.ndim != 2:
                raise PackError(name, f"must be 2-D, got shape {tuple(tensor.shape)}")
            if not torch.isfinite(tensor.to(torch.float32)).all():
                raise PackError(name, "contains NaN or Inf values (as float32)")
        for module in self.modules:
            down = self.tensors[module + LORA_A_SUFFIX]
            up = self.tensors.get(module + LORA_B_SUFFIX)
            if up is None:
                raise PackError(f"unet.{module}{LORA_B_SUFFIX}", "is missing (every lora_A needs its lora_B)")
            if down.shape[0] != self.rank or up.shape[1] != self.rank:
                raise PackError(
                    f"unet.{module}",
                    f"LoRA shapes {tuple(down.shape)} / {tuple(up.shape)} do not match lora_rank {self.rank}",
                )

    def validate_against(self, targets: dict[str, tuple[int, int]]) -> None:
        """Check every module exists in the base UNet with matching in/out features."""
        for module in self.modules:
            if module not in targets:
                raise PackError(f"unet.{module}", "is not a LoRA target of the base UNet (attention projection)")
            in_features, out_features = targets[module]
            down = self.tensors[module + LORA_A_SUFFIX]
            up = self.tensors[module + LORA_B_SUFFIX]
            if down.shape[1] != in_features or up.shape[0] != out_features:
                raise PackError(
                    f"unet.{module}",
                    f"LoRA maps {down.shape[1]}->{up.shape[0]} features, the base module maps "
                    f"{in_features}->{out_features}",
                )

    def validate_rank(self, max_rank: int) -> None:
        """Refuse a rank above what the serving UNet was exported for (its `lora_rank` range)."""
        if self.rank > max_rank:
            raise PackError("lora_rank", f"{self.rank} is above this deployment's maximum LoRA rank {max_rank}")


def _content_id(tensors: dict[str, torch.Tensor], rank: int, alpha: float) -> str:
    digest = hashlib.sha256(f"{rank}:{alpha}".encode())
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
