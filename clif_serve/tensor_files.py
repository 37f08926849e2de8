"""Reading the tensor files users bring from other tools (textual inversion, LoRA), without running code.

`.safetensors` files are read as such (tensors and their string metadata). Anything else is taken
for a pickle (`.pt`, `.bin`, `.ckpt`) and read with `torch.load(weights_only=True)`, which rebuilds
tensors and plain containers only; a pickle that asks for anything else is refused in one line
naming what it asked for.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import safe_open

from clif_serve.errors import PackError

_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def read_tensor_file(path: str | Path, field: str = "file") -> tuple[object, dict[str, str]]:
    """The content of a tensor file and its safetensors metadata ({} for pickles).

    safetensors: `{name: tensor}`; a pickle: whatever plain data it holds (nested dicts of tensors,
    strings and numbers). Errors are `PackError(field, ...)` naming the file.
    """
    file = Path(path)
    if not file.is_file():
        raise PackError(field, f"{file}: no such file")
    if file.suffix == ".safetensors":
        try:
            with safe_open(str(file), framework="pt") as handle:
                return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise PackError(field, f"{file.name} is not a readable safetensors file: {exc}") from exc
    try:
        return torch.load(file, map_location="cpu", weights_only=True), {}
    except Exception as exc:
        raise PackError(field, _pickle_refusal(file.name, exc)) from None


def _pickle_refusal(name: str, exc: Exception) -> str:
    """One line for a pickle torch would not load as plain data (torch's own text suggests an unsafe retry)."""
    unsafe = _UNSAFE_GLOBAL.search(str(exc))
    if unsafe:
        return (
            f"{name} is a pickle that asks to load {unsafe.group(1)}, more than plain tensor data; refused "
            "(clif-serve reads pickles as plain tensor data only; ask for a .safetensors file)"
        )
    return f"{name} is neither a safetensors file nor a pickle of plain tensors ({type(exc).__name__})"
