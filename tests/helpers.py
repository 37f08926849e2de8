"""Test helpers: random but valid concept packs and LoRA weights, unvalidated pack bytes, raw safetensors."""

from __future__ import annotations

from dataclasses import replace

import torch
from safetensors.torch import save as save_safetensors

from clif_serve.concepts.pack import EMBEDDING_PREFIX, LORA_PREFIX


def random_pack(base, name: str, class_word: str = "dog", seed: int = 0, num_tokens: int = 2):
    """A valid pack for `base` whose embeddings are random (so it visibly differs from the class word)."""
    from clif_serve.concepts.create import new_pack

    pack = new_pack(base, name, class_word, num_tokens)
    generator = torch.Generator().manual_seed(seed)
    embeddings = {k: torch.randn(v.shape, generator=generator) for k, v in pack.embeddings.items()}
    return replace(pack, embeddings=embeddings)


def random_lora(base, rank: int = 4, alpha: float = 4.0, seed: int = 0, modules: int | None = None):
    """LoRA weights with non-zero A and B for the base UNet's attention projections."""
    from clif_serve.lora.weights import LoraWeights

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, (in_features, out_features) in sorted(base.spec.lora_targets.items())[:modules]:
        tensors[f"{module}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator) * 0.3
        tensors[f"{module}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator) * 0.3
    return LoraWeights(tensors, rank=rank, alpha=alpha)


def raw_pack_bytes(pack, embeddings=None, metadata=None) -> bytes:
    """A pack's safetensors bytes WITHOUT validation, to build broken packs for refusal tests."""
    tensors = {EMBEDDING_PREFIX + k: v.contiguous() for k, v in (embeddings or pack.embeddings).items()}
    if pack.lora is not None:
        tensors.update({LORA_PREFIX + k: v.contiguous() for k, v in pack.lora.tensors.items()})
    return save_safetensors(tensors, metadata={**pack.manifest(), **(metadata or {})})


def header_bytes(header: bytes | str, payload: bytes = b"") -> bytes:
    """Safetensors framing (8-byte little-endian header length, header, payload) around any header text."""
    import struct

    raw = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(raw)) + raw + payload


def edit_header(data: bytes, edit) -> bytes:
    """Pack bytes whose JSON header went through `edit(header_dict) -> header_dict` (payload unchanged)."""
    import json
    import struct

    (length,) = struct.unpack("<Q", data[:8])
    header = edit(json.loads(data[8 : 8 + length]))
    return header_bytes(json.dumps(header), data[8 + length :])


def tiny_deployment(spec):
    """The deployment the tiny recipe exports (`clif_serve/export/recipes/tiny.toml`), without exporting."""
    from clif_serve.contract.deployment import Deployment
    from clif_serve.contract.ranges import Range
    from clif_serve.contract.stages import model_stages

    return Deployment(
        spec,
        model_stages(spec, with_unet_lora=True),
        batch=Range(1, 2, 8),
        height=Range(32, 64, 128),
        width=Range(32, 64, 128),
        concept_rows=Range(1, 4, 32),
        lora_rank=Range(1, 4, 64),
    )


def load_benchmark(name: str):
    """Import `benchmarks/<name>.py` as module `<name>_benchmark` (the scripts are no package)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def interrupted_export(out, resume_key: dict, source, stages) -> None:
    """Leave `.OUT.partial/` beside `out` as an export interrupted after `stages` passed: their folders
    (records included) copied from the export folder `source`, and `resume_key` (see
    `clif_serve.export.exporter.resume_key`). The next export into `out` with the same inputs traces
    only the other stages (`clif_serve.export.staging`)."""
    import json
    import shutil

    from clif_serve.export.staging import RESUME_FILE

    partial = out.parent / f".{out.name}.partial"
    for stage in stages:
        shutil.copytree(source.stage_dir(stage), partial / stage)
    (partial / RESUME_FILE).write_text(json.dumps(resume_key))
