"""Concept pack v1: one `.safetensors` file per concept, never pickle.

Tensors
    `embeddings.<text encoder name>`  `[T, H]`  one row per concept token, per text encoder
    `unet.<module>.lora_A.weight` / `unet.<module>.lora_B.weight`  optional UNet LoRA (peft naming)
Manifest (safetensors metadata, all strings)
    `format` = "clif-serve/concept-pack", `format_version` = "1", `name`, `trigger` (e.g. "<joe>"),
    `tokens` (JSON list, e.g. ["<joe_0>", "<joe_1>"]), `class_word`, `base_fingerprint`,
    `text_encoders` (JSON list), and with a LoRA: `lora_rank`, `lora_alpha`, `lora_set`.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from clif_serve.concepts.limits import DEFAULT_MAX_PACK_BYTES
from clif_serve.errors import PackError
from clif_serve.lora.weights import LoraWeights
from clif_serve.models.spec import ModelSpec

FORMAT = "clif-serve/concept-pack"
FORMAT_VERSION = "1"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
TRIGGER_PATTERN = re.compile(r"<[A-Za-z0-9_-]{1,64}>")
EMBEDDING_PREFIX = "embeddings."
LORA_PREFIX = "unet."
_REQUIRED_METADATA = ("format", "format_version", "name", "trigger", "tokens", "class_word", "base_fingerprint")


@dataclass(frozen=True)
class ConceptPack:
    """One customised concept: its trigger, token embeddings per text encoder and optional LoRA."""

    name: str
    trigger: str
    tokens: tuple[str, ...]
    class_word: str
    base_fingerprint: str
    embeddings: dict[str, torch.Tensor] = field(hash=False, compare=False)
    lora: LoraWeights | None = None
    # What this pack was already validated for ("" = self-consistency, else a base fingerprint): a
    # pack is checked once however many layers (parsing, registry, store) ask for it.
    _validated: set[str] = field(default_factory=set, init=False, repr=False, compare=False, hash=False)

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    def manifest(self) -> dict[str, str]:
        """The safetensors metadata written for this pack."""
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "trigger": self.trigger,
            "tokens": json.dumps(list(self.tokens)),
            "class_word": self.class_word,
            "base_fingerprint": self.base_fingerprint,
            "text_encoders": json.dumps(sorted(self.embeddings)),
        }
        if self.lora is not None:
            meta.update(
                lora_rank=str(self.lora.rank), lora_alpha=repr(float(self.lora.alpha)), lora_set=self.lora.set_id
            )
        return meta

    def validate(self) -> None:
        """Self-consistency checks that need no base model; raise PackError naming the field."""
        if "" in self._validated:
            return
        validate_name(self.name)
        if not TRIGGER_PATTERN.fullmatch(self.trigger):
            raise PackError("trigger", f"{self.trigger!r} must look like <name> with [A-Za-z0-9_-]{{1,64}} inside")
        if not self.tokens or len(set(self.tokens)) != len(self.tokens):
            raise PackError("tokens", "must be a non-empty list of distinct token strings")
        if not self.embeddings:
            raise PackError("embeddings", "the pack holds no token embeddings")
        for encoder, table in self.embeddings.items():
            key = EMBEDDING_PREFIX + encoder
            if table.ndim != 2 or table.shape[0] != self.num_tokens:
                raise PackError(key, f"must have shape [{self.num_tokens}, hidden], got {tuple(table.shape)}")
            if not table.is_floating_point():
                raise PackError(key, f"must be floating point, got {table.dtype}")
            if not torch.isfinite(table).all():
                raise PackError(key, "contains NaN or Inf values")
        if self.lora is not None:
            self.lora.validate()
            for key, tensor in self.lora.tensors.items():
                if not torch.isfinite(tensor).all():
                    raise PackError(LORA_PREFIX + key, "contains NaN or Inf values")
        self._validated.add("")

    def validate_for(self, spec: ModelSpec) -> None:
        """Check the pack fits a base model: fingerprint, text encoders, hidden sizes, LoRA targets."""
        if spec.fingerprint in self._validated:
            return
        self.validate()
        if self.base_fingerprint != spec.fingerprint:
            raise PackError(
                "base_fingerprint",
                f"pack {self.name!r} was made for base {self.base_fingerprint}, this model is {spec.fingerprint}",
            )
        expected = spec.text_encoder_names
        if sorted(self.embeddings) != sorted(expected):
            raise PackError(
                "embeddings",
                f"pack has embeddings for {len(self.embeddings)} text encoder(s) ({', '.join(sorted(self.embeddings))}); "
                f"the base model has {len(expected)} ({', '.join(expected)})",
            )
        for encoder in spec.text_encoders:
            width = self.embeddings[encoder.name].shape[1]
            if width != encoder.hidden_size:
                raise PackError(
                    EMBEDDING_PREFIX + encoder.name,
                    f"hidden size {width} does not match the base model's {encoder.hidden_size}",
                )
        if self.lora is not None:
            self.lora.validate_against(spec.lora_targets)
        self._validated.add(spec.fingerprint)


def validate_name(name: str) -> None:
    """Concept names are file-name safe: `[A-Za-z0-9_-]{1,64}` (no paths, no control characters)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise PackError("name", f"{name!r} must match [A-Za-z0-9_-]{{1,64}}")


def default_tokens(name: str, count: int) -> tuple[str, ...]:
    """The concept tokens of a trigger `<name>`: `<name_0> ... <name_{count-1}>`."""
    if count < 1:
        raise PackError("num_tokens", f"must be >= 1, got {count}")
    return tuple(f"<{name}_{index}>" for index in range(count))


def pack_to_bytes(pack: ConceptPack) -> bytes:
    """Serialise a (validated) pack to safetensors bytes."""
    pack.validate()
    tensors = {EMBEDDING_PREFIX + k: v.detach().to("cpu", torch.float32).contiguous() for k, v in pack.embeddings.items()}
    if pack.lora is not None:
        tensors.update(
            {LORA_PREFIX + k: v.detach().to("cpu", torch.float32).contiguous() for k, v in pack.lora.tensors.items()}
        )
    return save_safetensors_bytes(tensors, metadata=pack.manifest())


def write_pack(pack: ConceptPack, path: str | Path) -> Path:
    """Write a pack atomically (temporary file in the same folder, then rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = pack_to_bytes(pack)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read_pack(path: str | Path, max_bytes: int = DEFAULT_MAX_PACK_BYTES) -> ConceptPack:
    """Read and self-validate a pack file; the size limit is checked before anything is read."""
    file = Path(path)
    if not file.is_file():
        raise PackError("file", f"{file}: no such file")
    size = file.stat().st_size
    if size > max_bytes:
        raise PackError("file", f"{file.name} is {size} bytes, over the {max_bytes}-byte limit")
    return pack_from_bytes(file.read_bytes(), max_bytes=max_bytes, source=file.name)


def read_safetensors_header(data: bytes, source: str) -> dict:
    """Parse and sanity-check a safetensors header; raise PackError('file', ...) for non/corrupt files."""
    if len(data) < 8:
        raise PackError("file", f"{source} is not a safetensors file (only {len(data)} bytes)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len == 0 or header_len > len(data) - 8:
        raise PackError("file", f"{source} is not a safetensors file, or it is truncated (bad header length)")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackError("file", f"{source} is not a safetensors file (header is not JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise PackError("file", f"{source} is not a safetensors file (header is not a JSON object)")
    data_len = len(data) - 8 - header_len
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    if max(ends, default=0) > data_len:
        raise PackError("file", f"{source} is truncated: tensors need {max(ends)} bytes, {data_len} present")
    return header


def pack_from_bytes(data: bytes, max_bytes: int = DEFAULT_MAX_PACK_BYTES, source: str = "pack") -> ConceptPack:
    """Parse a pack from safetensors bytes (a file's content or a gRPC upload) and self-validate it."""
    if len(data) > max_bytes:
        raise PackError("file", f"{source} is {len(data)} bytes, over the {max_bytes}-byte limit")
    header = read_safetensors_header(data, source)
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise PackError("format", f"{source} is a safetensors file but not a clif-serve concept pack")
    if meta.get("format_version") != FORMAT_VERSION:
        raise PackError("format_version", f"{meta.get('format_version')!r} is not supported (expected {FORMAT_VERSION})")
    missing = [key for key in _REQUIRED_METADATA if key not in meta]
    if missing:
        raise PackError(missing[0], f"is missing from the manifest of {source}")
    try:
        tensors = load_safetensors_bytes(data)
    except Exception as exc:  # safetensors raises its own error types for corrupt payloads
        raise PackError("file", f"{source} is corrupt: {exc}") from exc
    try:
        tokens = tuple(json.loads(meta["tokens"]))
    except json.JSONDecodeError as exc:
        raise PackError("tokens", f"is not a JSON list ({exc})") from exc
    embeddings = {k[len(EMBEDDING_PREFIX) :]: v for k, v in tensors.items() if k.startswith(EMBEDDING_PREFIX)}
    lora_tensors = {k[len(LORA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(LORA_PREFIX)}
    unknown = [k for k in tensors if not k.startswith((EMBEDDING_PREFIX, LORA_PREFIX))]
    if unknown:
        raise PackError(unknown[0], "is not a tensor a concept pack may hold (embeddings.* or unet.*)")
    lora = None
    if lora_tensors:
        if "lora_rank" not in meta or "lora_alpha" not in meta:
            raise PackError("lora_rank", "the pack has LoRA tensors but no lora_rank/lora_alpha in its manifest")
        try:
            lora = LoraWeights(lora_tensors, rank=int(meta["lora_rank"]), alpha=float(meta["lora_alpha"]))
        except ValueError as exc:
            raise PackError("lora_rank", f"lora_rank/lora_alpha are not numbers ({exc})") from exc
    pack = ConceptPack(
        name=meta["name"],
        trigger=meta["trigger"],
        tokens=tokens,
        class_word=meta["class_word"],
        base_fingerprint=meta["base_fingerprint"],
        embeddings=embeddings,
        lora=lora,
    )
    pack.validate()
    return pack
