"""Import from / export to the textual-inversion files of other tools; load a pack's tokens into diffusers.

Layouts read (the layout is detected from the content; pickles only through `clif_serve.tensor_files`):

| layout | content | written by |
| --- | --- | --- |
| `token` | `{token: tensor [T, H] or [H]}` | diffusers' textual-inversion scripts (`learned_embeds.safetensors` / `.bin`) |
| `emb_params` | `{"emb_params": [T, H]}` (token from the `name` metadata, if any) | kohya sd-scripts; A1111 files converted to safetensors |
| `a1111` | `{"string_to_param": {"*": [T, H]}, "name": ..., "string_to_token": ..., "step": ...}` | Automatic1111 (`.pt`) |
| `a1111` (flat) | `{"string_to_param.*": [T, H]}` (`string_to_token.*` ignored) | A1111 dictionaries flattened into safetensors |
| `clip` | `{"clip_l": [T, H1], "clip_g": [T, H2]}` | SDXL embeddings of kohya / A1111 (one file, both text encoders) |

An SDXL base model needs a table per text encoder: one `clip` file, or two single-table files in
text-encoder order: diffusers' SDXL script writes `learned_embeds.safetensors` (text_encoder) and
`learned_embeds_2.safetensors` (text_encoder_2); a folder holding them may be given instead.

Export writes `token` (SD1.5: one file; SDXL: `<file>` and `<file>_2`, the diffusers SDXL layout),
`emb_params` (SD1.5) or `clip` (SDXL, the default there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from clif_serve.concepts.pack import ConceptPack, default_tokens, validate_name
from clif_serve.errors import PackError
from clif_serve.models.spec import ModelSpec
from clif_serve.tensor_files import read_tensor_file

SDXL_KEYS = {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}
LAYOUTS = ("token", "emb_params", "clip")
# What diffusers' textual-inversion scripts write into their output folder, per text encoder.
DIFFUSERS_FILES = (("learned_embeds.safetensors", "learned_embeds_2.safetensors"), ("learned_embeds.bin", "learned_embeds_2.bin"))
_FLAT_A1111 = "string_to_param."


@dataclass(frozen=True)
class EmbeddingFile:
    """What one textual-inversion file holds: one table, or (layout `clip`) one per text encoder."""

    path: Path
    layout: str
    tables: dict[str, torch.Tensor]  # "" for a single table, else the text encoder name
    token: str | None


def embedding_files(path: str | Path) -> list[Path]:
    """A file as given, or the files of a folder written by diffusers' textual-inversion scripts."""
    folder = Path(path)
    if not folder.is_dir():
        return [folder]
    for names in DIFFUSERS_FILES:
        found = [folder / name for name in names if (folder / name).is_file()]
        if found:
            return found
    raise PackError("embedding", f"{folder} holds none of {', '.join(name for names in DIFFUSERS_FILES for name in names)}")


def read_embedding_file(path: str | Path) -> EmbeddingFile:
    """Detect the layout of a textual-inversion file and read its table(s) as float32 `[T, H]`."""
    file = Path(path)
    data, metadata = read_tensor_file(file, field="embedding")
    if isinstance(data, torch.Tensor):  # a bare tensor (diffusers accepts it with an explicit token)
        return EmbeddingFile(file, "token", {"": _as_rows(data, file.name)}, None)
    if not isinstance(data, dict):
        raise PackError("embedding", f"{file.name} holds a {type(data).__name__}, not a dictionary of tensors")
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise PackError("embedding", f"{file.name}: string_to_param must hold one tensor (A1111 layout)")
        (table,) = params.values()
        name = data.get("name")
        return EmbeddingFile(file, "a1111", {"": _as_rows(table, "string_to_param")}, name if isinstance(name, str) else None)
    flat = [key for key in data if key.startswith(_FLAT_A1111)]
    if len(flat) == 1:
        return EmbeddingFile(file, "a1111", {"": _as_rows(data[flat[0]], flat[0])}, metadata.get("name"))
    if set(data) == set(SDXL_KEYS):
        return EmbeddingFile(file, "clip", {SDXL_KEYS[k]: _as_rows(v, k) for k, v in data.items()}, None)
    if len(data) == 1:
        (key, value), = data.items()
        if key == "emb_params":
            return EmbeddingFile(file, "emb_params", {"": _as_rows(value, key)}, metadata.get("name"))
        return EmbeddingFile(file, "token", {"": _as_rows(value, key)}, key)
    raise PackError(
        "embedding",
        f"{file.name}: not a textual-inversion layout clif-serve knows ({{token: tensor}}, emb_params, "
        f"string_to_param, clip_l/clip_g); found keys {sorted(data)[:8]}",
    )


def _as_rows(tensor: object, key: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise PackError(key, f"must be a floating-point tensor, got {type(tensor).__name__}")
    rows = tensor.detach().to(torch.float32)
    if rows.ndim == 1:
        rows = rows[None]
    if rows.ndim != 2:
        raise PackError(key, f"must be [tokens, hidden] or [hidden], got {tuple(tensor.shape)}")
    return rows


def read_textual_inversion(
    paths: str | Path | Sequence[str | Path], spec: ModelSpec
) -> tuple[dict[str, torch.Tensor], str | None, list[EmbeddingFile]]:
    """Embeddings per text encoder of `spec` from one or more TI files (or a folder), the token they name,
    and what was read from each file."""
    given = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not given:
        raise PackError("embedding", "give a textual-inversion file or folder")
    files = [read_embedding_file(file) for path in given for file in embedding_files(path)]
    encoders = spec.text_encoder_names
    if any(file.layout == "clip" for file in files):
        if len(files) != 1:
            raise PackError("embedding", f"{files[0].path.name} already holds both SDXL tables (clip_l/clip_g); give it alone")
        embeddings = files[0].tables
    elif len(files) == len(encoders):
        embeddings = {encoder: file.tables[""] for encoder, file in zip(encoders, files, strict=True)}
    elif len(encoders) == 2 and len(files) == 1:
        raise PackError("embedding", _second_file_hint(files[0].path))
    else:
        raise PackError(
            "embedding", f"{len(files)} single-table files for a base model with {len(encoders)} text encoder(s)"
        )
    rows = {table.shape[0] for table in embeddings.values()}
    if len(rows) != 1:
        raise PackError("embedding", f"the files hold different token counts per text encoder ({sorted(rows)})")
    return embeddings, files[0].token, files


def _second_file_hint(first: Path) -> str:
    """The refusal of one single-table file for SDXL, naming the file that should come with it."""
    message = (
        f"{first.name} holds one table, but this SDXL base model needs one per text encoder: give the file of "
        "the second text encoder too (diffusers' SDXL script writes learned_embeds.safetensors and "
        "learned_embeds_2.safetensors), with --embedding twice (first encoder first) or the folder holding both"
    )
    sibling = first.with_name(f"{first.stem}_2{first.suffix}")
    if sibling.is_file():
        message += f"; {sibling} is next to it"
    return message


def import_textual_inversion(
    paths: str | Path | Sequence[str | Path], spec: ModelSpec, name: str | None = None, class_word: str = ""
) -> ConceptPack:
    """Make a concept pack for `spec` from textual-inversion file(s) or a folder (see the module's table)."""
    embeddings, token, files = read_textual_inversion(paths, spec)
    if name is None:
        name = _stored_name(files[0], token)
    validate_name(name)
    pack = ConceptPack(
        name=name,
        trigger=f"<{name}>",
        tokens=default_tokens(name, next(iter(embeddings.values())).shape[0]),
        class_word=class_word,
        base_fingerprint=spec.fingerprint,
        embeddings=embeddings,
    )
    pack.validate_for(spec)
    return pack


def _stored_name(file: EmbeddingFile, token: str | None) -> str:
    """The concept name a file suggests: its token, else its name (the folder's for diffusers' file names)."""
    stem = file.path.parent.name if file.path.stem.startswith("learned_embeds") else file.path.stem
    name = (token or stem).strip("<>")
    try:
        validate_name(name)
    except PackError:
        raise PackError(
            "name", f"{name!r} (from {file.path.name}) is not a valid concept name; give one matching [A-Za-z0-9_-]{{1,64}}"
        ) from None
    return name


def textual_inversion_files(pack: ConceptPack, path: str | Path, layout: str | None = None) -> list[Path]:
    """The files `export_textual_inversion` writes for `pack` at `path` (SDXL `token`: two files)."""
    layout = _layout_for(pack, layout)
    target = Path(path)
    if layout == "token" and len(pack.embeddings) == 2:
        return [target, target.with_name(f"{target.stem}_2{target.suffix}")]
    return [target]


def _layout_for(pack: ConceptPack, layout: str | None) -> str:
    """The export layout: `token` fits every pack, `emb_params` SD1.5 packs, `clip` SDXL packs (its default)."""
    sdxl = len(pack.embeddings) == 2
    layout = layout or ("clip" if sdxl else "token")
    fits = {"token": True, "emb_params": not sdxl, "clip": sdxl}
    if layout not in fits:
        raise PackError("layout", f"{layout!r} is not one of {', '.join(LAYOUTS)}")
    if not fits[layout]:
        raise PackError("layout", f"{layout} cannot hold {'an SDXL' if sdxl else 'an SD1.5'} pack; use {'token or clip' if sdxl else 'token or emb_params'}")
    return layout


def export_textual_inversion(pack: ConceptPack, path: str | Path, layout: str | None = None) -> list[Path]:
    """Write the pack's embeddings as textual-inversion safetensors file(s) (see the module docstring)."""
    layout = _layout_for(pack, layout)
    targets = textual_inversion_files(pack, path, layout)
    tables = [pack.embeddings[encoder].contiguous() for encoder in sorted(pack.embeddings)]
    if layout == "clip":
        inverse = {encoder: key for key, encoder in SDXL_KEYS.items()}
        states = [{inverse[encoder]: table.contiguous() for encoder, table in pack.embeddings.items()}]
    else:
        key = "emb_params" if layout == "emb_params" else pack.trigger
        states = [{key: table} for table in tables]
    for target, state in zip(targets, states, strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(target))
    return targets


def load_into_diffusers(pipe, pack: ConceptPack) -> None:
    """Add the pack's tokens to a diffusers pipeline (`pipe.load_textual_inversion`, once per text encoder).

    Afterwards the pack's trigger in a prompt of `pipe` draws the concept, as in clif-serve.
    """
    for encoder in sorted(pack.embeddings):
        pipe.load_textual_inversion(
            pack.embeddings[encoder],
            token=pack.trigger,
            text_encoder=getattr(pipe, encoder),
            tokenizer=getattr(pipe, encoder.replace("text_encoder", "tokenizer")),
        )
