"""UNet LoRA weights as carried by concept packs (peft naming, one adapter per jointly trained set)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

import torch

from clif_serve.errors import PackError
from clif_serve.lora.naming import LORA_A_SUFFIX, LORA_B_SUFFIX


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

    @property
    def modules(self) -> list[str]:
        """Module paths (relative to the UNet) this LoRA touches, sorted."""
        return sorted(key[: -len(LORA_A_SUFFIX)] for key in self.tensors if key.endswith(LORA_A_SUFFIX))

    @cached_property
    def set_id(self) -> str:
        """Content hash: packs trained together carry the same LoRA and therefore the same id."""
        return _content_id(self.tensors, self.rank, self.alpha)

    def validate(self) -> None:
        """Check pairing, shapes against the rank and finiteness; raise PackError naming the tensor."""
        if self.rank < 1:
            raise PackError("lora_rank", f"must be >= 1, got {self.rank}")
        for key, tensor in self.tensors.items():
            if not key.endswith((LORA_A_SUFFIX, LORA_B_SUFFIX)):
                raise PackError(f"unet.{key}", "is not a peft LoRA tensor (*.lora_A.weight / *.lora_B.weight)")
            if tensor.ndim != 2:
                raise PackError(f"unet.{key}", f"must be 2-D, got shape {tuple(tensor.shape)}")
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
        orphans = [k for k in self.tensors if k.endswith(LORA_B_SUFFIX) and k[: -len(LORA_B_SUFFIX)] not in self.modules]
        if orphans:
            raise PackError(f"unet.{orphans[0]}", "has no matching lora_A tensor")

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


def _content_id(tensors: dict[str, torch.Tensor], rank: int, alpha: float) -> str:
    digest = hashlib.sha256(f"{rank}:{alpha}".encode())
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]

