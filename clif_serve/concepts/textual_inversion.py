"""Import from / export to diffusers textual-inversion files.

Layouts read (safetensors; `.bin`/`.pt` only through `torch.load(weights_only=True)`):
  * `{token: tensor [T, H] or [H]}`        diffusers' `learned_embeds` layout (one key)
  * `{"emb_params": tensor [T, H]}`         the kohya / A1111 layout
  * `{"clip_l": [T, H1], "clip_g": [T, H2]}` the SDXL two-encoder layout (text_encoder, text_encoder_2)
Export writes `{trigger: tensor}` (or `emb_params`) for SD1.5 and `clip_l`/`clip_g` for SDXL, which
`pipe.load_textual_inversion(...)` reads (for SDXL one call per encoder, as diffusers documents).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from clif_serve.concepts.pack import ConceptPack, default_tokens, validate_name
from clif_serve.errors import PackError
from clif_serve.models.spec import ModelSpec

SDXL_KEYS = {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}
LAYOUTS = ("token", "emb_params")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PackError("file", f"{path}: no such file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:
            raise PackError("file", f"{path.name} is not a readable safetensors file: {exc}") from exc
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PackError("file", f"{path.name} is not a safetensors file nor a plain tensor file: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise PackError("file", f"{path.name} does not hold a {{name: tensor}} dictionary")
    return data


def _as_rows(tensor: torch.Tensor, key: str) -> torch.Tensor:
    rows = tensor.detach().to(torch.float32)
    if rows.ndim == 1:
        rows = rows[None]
    if rows.ndim != 2:
        raise PackError(key, f"must be [tokens, hidden] or [hidden], got {tuple(tensor.shape)}")
    return rows


def read_textual_inversion(path: str | Path, spec: ModelSpec) -> tuple[dict[str, torch.Tensor], str | None]:
    """Embeddings per text encoder of `spec` from a TI file, and the token name it stored (if any)."""
    file = Path(path)
    state = _read_state_dict(file)
    if set(state) == set(SDXL_KEYS):
        embeddings = {SDXL_KEYS[key]: _as_rows(value, key) for key, value in state.items()}
        token = None
    elif len(state) == 1:
        (key, value), = state.items()
        embeddings = {spec.text_encoders[0].name: _as_rows(value, key)}
        token = None if key == "emb_params" else key
    else:
        raise PackError(
            "file", f"{file.name}: expected one {{token: tensor}}, emb_params or clip_l/clip_g, found keys {sorted(state)}"
        )
    return embeddings, token


def import_textual_inversion(
    path: str | Path, spec: ModelSpec, name: str | None = None, class_word: str = ""
) -> ConceptPack:
    """Make a concept pack for `spec` from a diffusers textual-inversion file."""
    embeddings, token = read_textual_inversion(path, spec)
    if name is None:
        name = (token or Path(path).stem).strip("<>")
    validate_name(name)
    num_tokens = next(iter(embeddings.values())).shape[0]
    pack = ConceptPack(
        name=name,
        trigger=f"<{name}>",
        tokens=default_tokens(name, num_tokens),
        class_word=class_word,
        base_fingerprint=spec.fingerprint,
        embeddings=embeddings,
    )
    pack.validate_for(spec)
    return pack


def export_textual_inversion(pack: ConceptPack, path: str | Path, layout: str = "token") -> Path:
    """Write the pack's embeddings as a diffusers textual-inversion safetensors file."""
    if layout not in LAYOUTS:
        raise PackError("layout", f"{layout!r} is not one of {', '.join(LAYOUTS)}")
    if len(pack.embeddings) == 2:
        inverse = {encoder: key for key, encoder in SDXL_KEYS.items()}
        state = {inverse[encoder]: table.contiguous() for encoder, table in pack.embeddings.items()}
    else:
        (table,) = pack.embeddings.values()
        state = {("emb_params" if layout == "emb_params" else pack.trigger): table.contiguous()}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(target))
    return target
