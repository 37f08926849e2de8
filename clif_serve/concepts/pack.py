"""Concept pack v1: one `.safetensors` file per concept, never pickle.

Tensors
    `embeddings.<text encoder name>`  `[T, H]`  one row per concept token, per text encoder
    `unet.<module>.lora_A.weight` / `unet.<module>.lora_B.weight`  optional UNet LoRA (peft naming)
Manifest (safetensors metadata, all strings)
    `format` = "clif-serve/concept-pack", `format_version` = "1", `name`, `trigger` (e.g. "<joe>"),
    `tokens` (JSON list, e.g. ["<joe_0>", "<joe_1>"]), `class_word`, `base_fingerprint`,
    `text_encoders` (JSON list), and with a LoRA: `lora_rank`, `lora_alpha`, `lora_set`.

Parsing is strict and linear in the pack's size: the safetensors header is checked against its
schema (bounded size and nesting, no duplicate keys, offsets inside the data, sizes matching
shape and dtype) and the manifest against the limits in `concepts.limits` before any tensor is
read; tensors are cast to float32 (what a pack stores) before they are checked for finiteness.
Every refusal is a `PackError` naming the manifest field or tensor.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
import struct
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from clif_serve.concepts.limits import (
    DEFAULT_MAX_PACK_BYTES,
    MAX_CLASS_WORD_CHARS,
    MAX_FINGERPRINT_CHARS,
    MAX_HEADER_BYTES,
    MAX_MANIFEST_ENTRIES,
    MAX_MANIFEST_KEY_CHARS,
    MAX_MANIFEST_VALUE_BYTES,
    MAX_TOKEN_CHARS,
    MAX_TOKENS,
)
from clif_serve.errors import PackError
from clif_serve.lora.weights import LoraWeights
from clif_serve.models.spec import ModelSpec

FORMAT = "clif-serve/concept-pack"
FORMAT_VERSION = "1"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
TRIGGER_PATTERN = re.compile(r"<[A-Za-z0-9_-]{1,64}>")
ENCODER_PATTERN = re.compile(r"[A-Za-z0-9_]{1,64}")
# What an error's field may look like (the client parses `<field>: <message>`), and tensor names.
FIELD_PATTERN = re.compile(r"[A-Za-z_][\w.\-]{0,199}")
TENSOR_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,199}")
EMBEDDING_PREFIX = "embeddings."
LORA_PREFIX = "unet."
_REQUIRED_METADATA = ("format", "format_version", "name", "trigger", "tokens", "class_word", "base_fingerprint")
# Bytes per element of the safetensors dtypes; packs hold floating point only.
_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}
_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
_MAX_DIMS = 8
# Unicode categories refused in manifest text: control, format, surrogate, private use, unassigned,
# line and paragraph separators (a newline in a token would forge a row of `concepts list`).
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


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
        if not isinstance(self.trigger, str) or not TRIGGER_PATTERN.fullmatch(self.trigger):
            raise PackError("trigger", f"{_shown(self.trigger)} must look like <name> with [A-Za-z0-9_-]{{1,64}} inside")
        self._validate_tokens()
        check_text("class_word", self.class_word, MAX_CLASS_WORD_CHARS, spaces=True)
        check_text("base_fingerprint", self.base_fingerprint, MAX_FINGERPRINT_CHARS, spaces=False)
        if not self.base_fingerprint:
            raise PackError("base_fingerprint", "must not be empty")
        if not self.embeddings:
            raise PackError("embeddings", "the pack holds no token embeddings")
        for encoder, table in self.embeddings.items():
            key = EMBEDDING_PREFIX + str(encoder)
            if not isinstance(encoder, str) or not ENCODER_PATTERN.fullmatch(encoder):
                raise _entry_error(key, "text encoder names match [A-Za-z0-9_]{1,64}")
            if not table.is_floating_point():
                raise PackError(key, f"must be floating point, got {table.dtype}")
            if table.ndim != 2 or table.shape[0] != self.num_tokens:
                raise PackError(key, f"must have shape [{self.num_tokens}, hidden], got {tuple(table.shape)}")
            if not torch.isfinite(table.to(torch.float32)).all():
                raise PackError(key, "contains NaN or Inf values (as float32)")
        if self.lora is not None:
            self.lora.validate()
        self._validated.add("")

    def _validate_tokens(self) -> None:
        tokens = self.tokens
        if not isinstance(tokens, (tuple, list)) or not tokens or len(set(tokens)) != len(tokens):
            raise PackError("tokens", "must be a non-empty list of distinct token strings")
        if len(tokens) > MAX_TOKENS:
            raise PackError("tokens", f"{len(tokens)} tokens; a concept has at most {MAX_TOKENS} (what a prompt holds)")
        for token in tokens:
            check_text("tokens", token, MAX_TOKEN_CHARS, spaces=False)
            if not token:
                raise PackError("tokens", "token strings must not be empty")

    def validate_for(self, spec: ModelSpec) -> None:
        """Check the pack fits a base model: fingerprint, text encoders, hidden sizes, LoRA targets."""
        if spec.fingerprint in self._validated:
            return
        self.validate()
        if self.num_tokens > spec.max_length - 2:
            raise PackError(
                "tokens",
                f"{self.num_tokens} tokens; a prompt of this base model holds at most {spec.max_length - 2}",
            )
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


def same_content(a: ConceptPack, b: ConceptPack) -> bool:
    """Whether two packs hold the same concept: equal manifests (the LoRA set id included) and embeddings.

    (The bytes of two saves of one pack may differ: safetensors does not order the metadata.)
    """
    if a.manifest() != b.manifest() or sorted(a.embeddings) != sorted(b.embeddings):
        return False
    return all(
        torch.equal(a.embeddings[k].to(torch.float32), b.embeddings[k].to(torch.float32)) for k in a.embeddings
    )


def validate_name(name: str) -> None:
    """Concept names are file-name safe: `[A-Za-z0-9_-]{1,64}` (no paths, no control characters)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise PackError("name", f"{_shown(name)} must match [A-Za-z0-9_-]{{1,64}}")


def check_text(field: str, value: object, max_chars: int, spaces: bool) -> None:
    """Manifest text: a string of at most `max_chars` characters without control or format characters
    (nor white space unless `spaces`); PackError naming `field` otherwise."""
    if not isinstance(value, str):
        raise PackError(field, f"must be a string, got {type(value).__name__}")
    if len(value) > max_chars:
        raise PackError(field, f"{_shown(value)} is {len(value)} characters long, over the limit of {max_chars}")
    for char in value:
        if unicodedata.category(char) in _REFUSED_CATEGORIES or (not spaces and char.isspace()):
            raise PackError(field, f"{_shown(value)} contains the character {char!r}, which is not allowed here")


def _shown(value: object, limit: int = 40) -> str:
    """A value for an error message: repr (control characters escaped), shortened."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


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
    write_atomically(target, pack_to_bytes(pack))
    return target


def write_atomically(target: Path, data: bytes) -> None:
    """Write `data` to `target` through a temporary file `.<name>.*` in the same folder, fsync'ed, then renamed."""
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


def read_pack(path: str | Path, max_bytes: int = DEFAULT_MAX_PACK_BYTES) -> ConceptPack:
    """Read and self-validate a pack file; the size limit is checked before anything is read."""
    file = Path(path)
    with open_pack_file(file) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > max_bytes:
            raise PackError("file", f"{file.name} is {size} bytes, over the {max_bytes}-byte limit")
        data = handle.read(max_bytes + 1)
    return pack_from_bytes(data, max_bytes=max_bytes, source=file.name)


@contextlib.contextmanager
def open_pack_file(file: Path) -> Iterator[BinaryIO]:
    """The file at `file` opened once for reading (every later check reads that very file, even if a writer
    replaces or deletes the path meanwhile); PackError naming `file` for a missing path or no regular file."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO planted there does not hang us
    except FileNotFoundError:
        raise PackError("file", f"{file}: no such file") from None
    except OSError as exc:
        raise PackError("file", f"{file}: cannot be opened ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PackError("file", f"{file}: not a regular file")
    with os.fdopen(fd, "rb") as handle:
        yield handle


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    found: dict = {}
    for key, value in pairs:
        if key in found:
            raise _DuplicateKey(key)
        found[key] = value
    return found


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_safetensors_header(data: bytes, source: str) -> tuple[dict[str, dict], dict[str, str]]:
    """The tensor entries and the metadata of safetensors bytes, checked against the format's schema.

    Raises PackError: `file` for bytes that are not (or not a whole) safetensors file, the tensor's
    name for a bad entry, the metadata key for a bad manifest value.
    """
    header_len = _header_length(data[:8], len(data), source)
    header, metadata = _parse_header(data[8 : 8 + header_len], source)
    data_len = len(data) - 8 - header_len
    for name, entry in header.items():
        _check_entry(name, entry, data_len, source)
    return header, metadata


def read_manifest(path: str | Path) -> dict[str, str]:
    """The manifest of a pack file, reading its header only (PackError when it is no safetensors file)."""
    file = Path(path)
    with open_pack_file(file) as handle:
        prefix = handle.read(8)
        header_len = _header_length(prefix, os.fstat(handle.fileno()).st_size, file.name)
        _, metadata = _parse_header(handle.read(header_len), file.name)
    return metadata


def _header_length(prefix: bytes, total: int, source: str) -> int:
    if len(prefix) < 8:
        raise PackError("file", f"{source} is not a safetensors file (only {total} bytes)")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len == 0 or header_len > total - 8:
        raise PackError("file", f"{source} is not a safetensors file, or it is truncated (bad header length)")
    if header_len > MAX_HEADER_BYTES:
        raise PackError("file", f"{source}: its header is {header_len} bytes, over the {MAX_HEADER_BYTES}-byte limit")
    return header_len


def _parse_header(raw: bytes, source: str) -> tuple[dict, dict[str, str]]:
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise PackError("file", f"{source} is not a valid safetensors file (header key {_shown(exc.key)} twice)") from None
    except RecursionError:
        raise PackError("file", f"{source} is not a safetensors file (header nested too deeply)") from None
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise PackError("file", f"{source} is not a safetensors file (header is not JSON: {exc})") from None
    if not isinstance(header, dict):
        raise PackError("file", f"{source} is not a safetensors file (header is not a JSON object)")
    return header, _check_metadata(header.pop("__metadata__", {}))


def _check_metadata(metadata: object) -> dict[str, str]:
    if not isinstance(metadata, dict):
        raise PackError("__metadata__", "must be a JSON object of strings")
    if len(metadata) > MAX_MANIFEST_ENTRIES:
        raise PackError("__metadata__", f"has {len(metadata)} entries, over the limit of {MAX_MANIFEST_ENTRIES}")
    for key, value in metadata.items():
        if len(key) > MAX_MANIFEST_KEY_CHARS:
            raise PackError("__metadata__", f"key {_shown(key)} is over {MAX_MANIFEST_KEY_CHARS} characters")
        if not isinstance(value, str):
            raise _entry_error(key, f"manifest values are strings, got {type(value).__name__}", "__metadata__")
        if len(value.encode("utf-8", "surrogatepass")) > MAX_MANIFEST_VALUE_BYTES:
            raise _entry_error(key, f"is over the manifest's {MAX_MANIFEST_VALUE_BYTES}-byte limit per value", "__metadata__")
    return metadata


def _check_entry(name: str, entry: object, data_len: int, source: str) -> None:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _entry_error(name, "header entry must hold exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPE_BYTES:
        raise _entry_error(name, f"dtype {_shown(dtype)} is not a safetensors dtype")
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS or not all(_is_count(d) for d in shape):
        raise _entry_error(name, f"shape must be a list of at most {_MAX_DIMS} non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise _entry_error(name, "data_offsets must be [begin, end], two non-negative integers")
    begin, end = offsets
    if end > data_len:
        raise PackError("file", f"{source} is truncated: tensors need {end} bytes, {data_len} present")
    if end - begin != math.prod(shape) * _DTYPE_BYTES[dtype]:
        raise _entry_error(name, f"data_offsets span {end - begin} bytes; a {dtype} tensor of shape {shape} needs {math.prod(shape) * _DTYPE_BYTES[dtype]}")


def _entry_error(name: str, message: str, fallback: str = "header") -> PackError:
    """A PackError naming a header or manifest entry; a name no client could read as a field (empty,
    odd characters, very long) is reported under `fallback`, with the name in the message."""
    if FIELD_PATTERN.fullmatch(name):
        return PackError(name, message)
    return PackError(fallback, f"entry {_shown(name, 80)}: {message}")


def _parse_tokens(text: str) -> tuple[str, ...]:
    try:
        value = json.loads(text)
    except RecursionError:
        raise PackError("tokens", "is not a JSON list of strings (nested too deeply)") from None
    except ValueError as exc:
        raise PackError("tokens", f"is not a JSON list ({exc})") from None
    if not isinstance(value, list) or not all(isinstance(token, str) for token in value):
        raise PackError("tokens", "must be a JSON list of strings")
    return tuple(value)


def _parse_lora(meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> LoraWeights | None:
    keys = [key for key in ("lora_rank", "lora_alpha", "lora_set") if key in meta]
    if not tensors:
        if keys:
            raise PackError(keys[0], "the manifest describes a LoRA but the pack holds no unet.* tensors")
        return None
    if "lora_rank" not in meta or "lora_alpha" not in meta:
        raise PackError("lora_rank", "the pack has LoRA tensors but no lora_rank/lora_alpha in its manifest")
    try:
        rank = int(meta["lora_rank"])
    except ValueError:
        raise PackError("lora_rank", f"{_shown(meta['lora_rank'])} is not an integer") from None
    try:
        alpha = float(meta["lora_alpha"])
    except ValueError:
        raise PackError("lora_alpha", f"{_shown(meta['lora_alpha'])} is not a number") from None
    return LoraWeights(tensors, rank=rank, alpha=alpha)


def pack_from_bytes(data: bytes, max_bytes: int = DEFAULT_MAX_PACK_BYTES, source: str = "pack") -> ConceptPack:
    """Parse a pack from safetensors bytes (a file's content or a gRPC upload) and self-validate it.

    The size limit, the header and the manifest are checked before any tensor is read; tensors are
    kept (and checked) as float32, what `pack_to_bytes` stores.
    """
    if len(data) > max_bytes:
        raise PackError("file", f"{source} is {len(data)} bytes, over the {max_bytes}-byte limit")
    entries, meta = read_safetensors_header(data, source)
    if meta.get("format") != FORMAT:
        raise PackError("format", f"{source} is a safetensors file but not a clif-serve concept pack")
    if meta.get("format_version") != FORMAT_VERSION:
        raise PackError("format_version", f"{_shown(meta.get('format_version'))} is not supported (expected {FORMAT_VERSION})")
    missing = [key for key in _REQUIRED_METADATA if key not in meta]
    if missing:
        raise PackError(missing[0], f"is missing from the manifest of {source}")
    for name, entry in entries.items():
        if not TENSOR_NAME_PATTERN.fullmatch(name):
            raise _entry_error(name, "tensor names are up to 200 characters of [A-Za-z0-9_.-]")
        if not name.startswith((EMBEDDING_PREFIX, LORA_PREFIX)):
            raise _entry_error(name, "is not a tensor a concept pack may hold (embeddings.* or unet.*)")
        if entry["dtype"] not in _FLOAT_DTYPES:
            raise _entry_error(name, f"must be floating point ({', '.join(_FLOAT_DTYPES)}), got {entry['dtype']}")
    tokens = _parse_tokens(meta["tokens"])
    try:
        tensors = load_safetensors_bytes(data)
    except Exception as exc:  # safetensors raises its own error types for corrupt payloads
        raise PackError("file", f"{source} is corrupt: {exc}") from exc
    tensors = {key: value.to(torch.float32) for key, value in tensors.items()}
    embeddings = {k[len(EMBEDDING_PREFIX) :]: v for k, v in tensors.items() if k.startswith(EMBEDDING_PREFIX)}
    lora = _parse_lora(meta, {k[len(LORA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(LORA_PREFIX)})
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
    _check_manifest_agrees(pack, meta)
    return pack


def _check_manifest_agrees(pack: ConceptPack, meta: dict[str, str]) -> None:
    """The manifest's LoRA set id, when given, must be the id of the LoRA tensors (tools key sets by it)."""
    if pack.lora is not None and "lora_set" in meta and meta["lora_set"] != pack.lora.set_id:
        raise PackError("lora_set", f"{_shown(meta['lora_set'])} does not match the LoRA tensors (set {pack.lora.set_id})")
